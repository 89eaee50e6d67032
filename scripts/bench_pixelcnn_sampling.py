"""Sampling speed of the PixelCNN family: images per second for a batch of MNIST-shaped samples.

    python scripts/bench_pixelcnn_sampling.py                      # both variants, the *_cpu preset sizes
    python scripts/bench_pixelcnn_sampling.py --preset default     # the model configs' defaults instead
    python scripts/bench_pixelcnn_sampling.py --no-window          # also time the sampler without its window crop
    OMP_NUM_THREADS=1 python scripts/bench_pixelcnn_sampling.py    # on a shared CPU

The weights are untrained (the speed does not depend on them). Each image takes H * W network passes (times C
for RGB with a per-sub-pixel output); the sampler runs the network only on the window the receptive field
covers and the output layers only on the current pixel. `--no-window` widens that window to all rows up to
the current one and the whole width (rows below are still skipped), which shows what the crop saves.
"""

from __future__ import annotations

import argparse
import time

import torch

from gentrain.composition import compose, to_config
from gentrain.data.schemas import DataInfo
from gentrain.composition import build_model

MNIST = DataInfo(channels=1, height=28, width=28, levels=256, num_classes=10)


def build(model: str, preset: str, device: torch.device):
    overrides = [f"model={model}"] if preset == "default" else [f"experiment={model}_cpu"]
    cfg = to_config(compose(overrides))
    return build_model(cfg.model, MNIST).to(device).eval()


def time_sampling(model, samples: int, repeats: int, device: torch.device) -> float:
    """Best of `repeats` wall times (s) for drawing `samples` images."""
    best = float("inf")
    for repeat in range(repeats):
        generator = torch.Generator(device=device).manual_seed(repeat)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.sample(samples, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="images per sample() call")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per model; the best is reported")
    parser.add_argument("--preset", choices=["cpu", "default"], default="cpu",
                        help="cpu: the sizes of experiment=<model>_cpu; default: configs/model/<model>.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-window", action="store_true", help="also time the sampler without its window crop")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.samples} samples of "
          f"{MNIST.channels}x{MNIST.height}x{MNIST.width}, best of {args.repeats}")
    for name in ("pixelcnn", "gated_pixelcnn"):
        model = build(name, args.preset, device)
        params = sum(p.numel() for p in model.parameters())
        passes = MNIST.height * MNIST.width
        variants = [("window", model.network.reach)]
        if args.no_window:
            variants.append(("rows <= i", (MNIST.height, MNIST.width)))
        for label, reach in variants:
            model.network.reach = reach
            seconds = time_sampling(model, args.samples, args.repeats, device)
            print(f"{name:15s} ({params:,} params, {label:9s}): {seconds:7.2f} s, "
                  f"{args.samples / seconds:7.3f} images/s, {1000 * seconds / passes:6.2f} ms per pixel step")


if __name__ == "__main__":
    main()
