"""Does bf16 change a trained VAE's importance-weighted bound? fp32 against bf16 autocast on the same latents.

The end-of-run bound is evaluated in the run's precision (trainer.precision). This script loads a finished VAE run
and computes the k-sample bound on --images test images three times: in fp32, under bf16 autocast with the same
random latents, and in fp32 with other latents. The bf16 - fp32 difference is what bf16 changes; the difference
between the two fp32 estimates is the Monte Carlo noise of the bound itself, the scale to judge it against.

    python scripts/iw_precision.py outputs/2026-12-01/23-35-49 --images 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def bound(model, images: torch.Tensor, k: int, batch_size: int, seed: int, bf16: bool) -> tuple[torch.Tensor, float]:
    """The per-image bound (nats) and seconds per 1,000 images; batches seeded from `seed` and their start."""
    from gentrain.data.batches import Batch

    values, started = [], time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch_size):
            torch.manual_seed(seed + start)
            values.append(model.importance_weighted_nll(Batch(images[start : start + batch_size], None), k))
    return torch.cat(values), (time.perf_counter() - started) * 1000 / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished `model=vae` run directory")
    parser.add_argument("--images", type=int, default=1000, help="test images (the first ones)")
    parser.add_argument("--k", type=int, default=100, help="importance samples per image")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    import gentrain
    from gentrain.composition import load_dataset

    run = gentrain.load_run(args.run, checkpoint="last", device="cpu")
    if not hasattr(run.model, "importance_weighted_nll"):
        parser.error(f"{args.run} is not a VAE run")
    model = run.model.eval().to(memory_format=torch.channels_last)  # as the trainer evaluates it on a CPU
    images = load_dataset(run.config.dataset).test.images[: args.images]
    fp32, fp32_time = bound(model, images, args.k, args.batch_size, seed=0, bf16=False)
    bf16, bf16_time = bound(model, images, args.k, args.batch_size, seed=0, bf16=True)
    other, _ = bound(model, images, args.k, args.batch_size, seed=1_000_000, bf16=False)
    print(f"k={args.k} bound on {len(images):,} test images of {args.run}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"  fp32: {fp32.mean():.4f} nats/image, {fp32_time:.1f} s per 1,000 images")
    print(f"  bf16: {bf16.mean():.4f} nats/image, {bf16_time:.1f} s per 1,000 images")
    for name, diff in (("bf16 - fp32, same latents", bf16 - fp32), ("fp32 - fp32, other latents", other - fp32)):
        print(f"  {name}: mean {diff.mean():+.4f}, per-image std {diff.std():.4f}, max |.| {diff.abs().max():.4f} nats")


if __name__ == "__main__":
    main()
