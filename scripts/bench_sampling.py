"""Sampling speed of the PixelCNN family: samples per second of each sampler, at several batch sizes and shapes.

  naive    the whole network on the whole image for every sub-pixel (what any causal network allows)
  window   the network on the window its receptive field covers, the head on the current pixel only
  cached   gentrain's sampler: the kept maps of every layer, each layer computed at the current pixel only
           (Ramachandran et al., 2017); the same distribution (tests/test_pixelcnn.py: the same images for a
           seed, the parameters of the whole network within 1e-5)

    python scripts/bench_pixelcnn_sampling.py                        # the model configs' defaults
    python scripts/bench_pixelcnn_sampling.py --batches 16 --rows 4  # time 4 rows instead of 2
    OMP_NUM_THREADS=1 python scripts/bench_pixelcnn_sampling.py      # on a shared CPU

The weights are untrained (the speed does not depend on them). The window and cached samplers draw whole images;
the naive one, which needs minutes per image, draws the last --rows rows and its rate is scaled to whole images
(each of its rows costs the same).
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

from gentrain.composition import build_model, compose, to_config
from gentrain.data.schemas import DataInfo
from gentrain.models.autoregressive import AutoregressiveNetwork, CausalNetwork, SamplingSession

SHAPES = {"mnist": DataInfo(1, 28, 28, 256, 10), "cifar10": DataInfo(3, 32, 32, 256, 10)}


def samplers(network: type) -> dict[str, list]:
    """What to patch on the network class for each sampler."""
    session = lambda net, inputs, class_bias: SamplingSession(net, inputs, class_bias)  # noqa: E731
    return {
        "naive": [mock.patch.object(network, "session", session),
                  mock.patch.object(network, "params_at", AutoregressiveNetwork.params_at)],
        "window": [mock.patch.object(network, "session", session),
                   mock.patch.object(network, "params_at", CausalNetwork.params_at)],
        "cached": [],
    }


def seconds_per_image(model, batch: int, rows: int, device: torch.device) -> float:
    """Seconds per whole image, from drawing the last `rows` rows of `batch` images."""
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
    parser.add_argument("--rows", type=int, default=2, help="rows the naive sampler draws (its rate is scaled)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"Device {device}, torch threads {torch.get_num_threads()}; samples/s of whole images (naive: from the "
          f"time to draw the last {args.rows} rows), default model configs, untrained weights.\n")
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
                            rows = args.rows if sampler == "naive" else model.data.height
                            rates[sampler] = 1 / seconds_per_image(model, batch, rows, device)
                    finally:
                        for patch in patches:
                            patch.stop()
                speedup = f"{rates['cached'] / rates['naive']:.1f}x" if {"cached", "naive"} <= set(rates) else ""
                print(f"| {name} | {shape} | {batch} | " + " | ".join(f"{rates[s]:.3f}" for s in args.samplers)
                      + f" | {speedup} |", flush=True)


if __name__ == "__main__":
    main()
