"""Sampling speed of the PixelCNN family: samples per second of each sampler, at several batch sizes and shapes.

  naive    the whole network on the whole image for every sub-pixel (what any causal network allows)
  window   the network on the window its receptive field covers, the head on the current pixel only
  cached   gentrain's sampler: the kept maps of every layer, each layer computed at the current pixel only
           (Ramachandran et al., 2017); the same distribution (tests/test_pixelcnn.py: the same images for a
           seed, the parameters of the whole network within 1e-5)

    python scripts/bench_pixelcnn_sampling.py                        # the model configs' defaults
    python scripts/bench_pixelcnn_sampling.py --batches 16 --rows 4  # time 4 rows instead of 2
    OMP_NUM_THREADS=1 python scripts/bench_pixelcnn_sampling.py      # on a shared CPU

The weights are untrained (the speed does not depend on them). Only the last --rows rows of each image are drawn
(the naive sampler needs minutes for one whole image) and the rate is scaled to whole images: every row costs the
same for the naive and cached samplers (the cached one's setting-up pass counts against it); for the window
sampler the last rows are the dearest, so its figure is a lower bound.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

from gentrain.composition import build_model, compose, to_config
from gentrain.data.schemas import DataInfo
from gentrain.models.autoregressive import AutoregressiveNetwork, CausalConvNetwork, SamplingSession

SHAPES = {"mnist": DataInfo(1, 28, 28, 256, 10), "cifar10": DataInfo(3, 32, 32, 256, 10)}


def samplers(network: type) -> dict[str, list]:
    """What to patch on the network class for each sampler."""
    session = lambda net, inputs, class_bias: SamplingSession(net, inputs, class_bias)  # noqa: E731
    return {
        "naive": [mock.patch.object(network, "session", session),
                  mock.patch.object(network, "params_at", AutoregressiveNetwork.params_at)],
        "window": [mock.patch.object(network, "session", session),
                   mock.patch.object(network, "params_at", CausalConvNetwork.params_at)],
        "cached": [],
    }


def seconds_per_image(model, batch: int, rows: int, device: torch.device) -> float:
    d = model.data
    images = torch.zeros(batch, d.channels, d.height, d.width, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    first_row = d.height - rows
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(images, first_row, None, generator)  # the rows from first_row on: `rows` of them
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * d.height / rows / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["pixelcnn", "gated_pixelcnn"])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 16, 64])
    parser.add_argument("--samplers", nargs="*", default=["naive", "window", "cached"])
    parser.add_argument("--rows", type=int, default=2, help="rows drawn per timing (the rate is per whole image)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"Device {device}, torch threads {torch.get_num_threads()}; samples/s of whole images (from the time "
          f"to draw the last {args.rows} rows), default model configs, untrained weights.\n")
    print("| model | shape | batch | " + " | ".join(f"{s} samples/s" for s in args.samplers) + " | cached / naive |")
    print("|---" * (4 + len(args.samplers)) + "|")
    for name in args.models:
        for shape in args.shapes:
            torch.manual_seed(0)
            model = build_model(to_config(compose([f"model={name}"])).model, SHAPES[shape]).to(device).eval()
            for batch in args.batches:
                rates = {}
                for sampler in args.samplers:
                    patches = samplers(type(model.network))[sampler]
                    for patch in patches:
                        patch.start()
                    try:
                        with torch.no_grad():
                            rates[sampler] = 1 / seconds_per_image(model, batch, args.rows, device)
                    finally:
                        for patch in patches:
                            patch.stop()
                speedup = f"{rates['cached'] / rates['naive']:.1f}x" if {"cached", "naive"} <= set(rates) else ""
                print(f"| {name} | {shape} | {batch} | " + " | ".join(f"{rates[s]:.3f}" for s in args.samplers)
                      + f" | {speedup} |", flush=True)


if __name__ == "__main__":
    main()
