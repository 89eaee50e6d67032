"""Sampling speed of the autoregressive models: samples per second of each sampler, at several batch sizes and
shapes.

  naive    the whole network on the whole image for every sub-pixel (what any causal network allows)
  window   the network on the rows up to the current one and the columns its receptive field covers, the head on
           the current pixel only (the convolutional and recurrent networks)
  cached   gentrain's sampler: the PixelCNN family keeps the maps of every layer and computes each layer at the
           current pixel only (Ramachandran et al., 2017); PixelRNN keeps every layer's states and cells and
           computes one step of each LSTM per pixel; MADE computes the current pixel's output units only; the
           pixel Transformer runs each pixel's token once through its blocks, with every earlier key and value
           cached; PixelCNN++ keeps every stage's maps, computes its down stream once per row and each
           stage of its down-right stream at the current pixel only, at each resolution where that pixel is
           new. The same distribution: tests/test_autoregressive.py (and test_pixelcnnpp.py) check the same
           images for a seed and the parameters of the whole network within 1e-5

    python scripts/bench_sampling.py                                 # every model's default config
    python scripts/bench_sampling.py --models row_lstm --batches 16  # one model, one batch size
    OMP_NUM_THREADS=1 python scripts/bench_sampling.py               # on a shared CPU
    python scripts/bench_sampling.py --models pixel_transformer --shapes binarized_mnist --batches 16 \
        --overrides model.hidden_channels=128 model.num_layers=6        # another size of a model

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

SHAPES = {"mnist": DataInfo(1, 28, 28, 256, 10), "cifar10": DataInfo(3, 32, 32, 256, 10),
          "binarized_mnist": DataInfo(1, 28, 28, 2, 10)}
MODELS = {
    "pixelcnn": ["model=pixelcnn"],
    "gated_pixelcnn": ["model=gated_pixelcnn"],
    "row_lstm": ["model=pixelrnn", "model.layer=row_lstm"],
    "diagonal_bilstm": ["model=pixelrnn", "model.layer=diagonal_bilstm"],
    "made": ["model=made"],
    "pixel_transformer": ["model=pixel_transformer"],
    "multi_query_transformer": ["model=pixel_transformer", "model.key_value_heads=1"],
    "pixelcnnpp": ["model=pixelcnnpp"],
}


def whole_network_session(model, inputs, labels, generator) -> SamplingSession:
    return SamplingSession(model.network, inputs, model.network.embed_labels(labels))


def samplers(model) -> dict[str, list]:
    """What to patch for each sampler (None: the model has no such sampler)."""
    network = type(model.network)
    return {
        "naive": [mock.patch.object(type(model), "sampling_session", whole_network_session),
                  mock.patch.object(network, "params_at", AutoregressiveNetwork.params_at)],
        "window": [mock.patch.object(type(model), "sampling_session", whole_network_session),
                   mock.patch.object(network, "params_at", CausalNetwork.params_at)]
        if issubclass(network, CausalNetwork) else None,
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
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--shapes", nargs="*", default=["mnist", "cifar10"], choices=list(SHAPES))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 16, 64])
    parser.add_argument("--samplers", nargs="*", default=["naive", "window", "cached"])
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for every model")
    parser.add_argument("--rows", type=int, default=2, help="rows the naive sampler draws (its rate is scaled)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"Device {device}, torch threads {torch.get_num_threads()}; samples/s of whole images (naive: from the "
          f"time to draw the last {args.rows} rows), default model configs"
          f"{' + ' + ' '.join(args.overrides) if args.overrides else ''}, untrained weights.\n")
    print("| model | shape | batch | " + " | ".join(f"{s} samples/s" for s in args.samplers) + " | cached / naive |")
    print("|---" * (4 + len(args.samplers)) + "|")
    for name in args.models:
        for shape in args.shapes:
            torch.manual_seed(0)
            config = to_config(compose([*MODELS[name], *args.overrides]))
            model = build_model(config.model, SHAPES[shape]).to(device).eval()
            for batch in args.batches:
                rates = {}
                for sampler in args.samplers:
                    patches = samplers(model)[sampler]
                    if patches is None:
                        continue
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
                print(f"| {name} | {shape} | {batch} | "
                      + " | ".join(f"{rates[s]:.3f}" if s in rates else "" for s in args.samplers)
                      + f" | {speedup} |", flush=True)


if __name__ == "__main__":
    main()
