"""The plain loop of loop.py, recording the validation metric against images seen: the twin of a gentrain run in
the learning-curve comparison (scripts/parity.py).

What is the same as `gentrain <overrides> seed=<seed>`: the network (gentrain's model class from the same composed
config, built right after the same seeding, so the same initial weights), its losses, the optimizer and its
settings, the batch size, and the data: the same training, validation and binarized images (gentrain's dataset
loader, since the split and the static binarization are part of the protocol). What is plain: the loop. A
DataLoader over the training images shuffled by its own generator, dynamic binarization drawn per batch with
torch.rand, zero_grad / backward / step with PyTorch's default optimizers (plain_updates), and an evaluation in
eval mode under no_grad over the first --eval-limit validation images. No EMA, clipping, schedules or checks.

Prints one JSON line per evaluation: {"step", "images", "train_seconds", "metrics": {name: mean}}.

    python scripts/plain/curve.py --seed 0 --steps 600 --eval-every 200 -- experiment=made_binarized_mnist
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop import make_optimizer, plain_updates  # noqa: E402

from gentrain.composition import build_model, compose, load_dataset, to_config  # noqa: E402
from gentrain.data.base import ImageSplit  # noqa: E402
from gentrain.data.batches import Batch  # noqa: E402
from gentrain.data.schemas import resolve_root  # noqa: E402
from gentrain.data.stored import pixels  # noqa: E402
from gentrain.runtime import seed_everything  # noqa: E402


@torch.no_grad()
def validate(model, split: ImageSplit, limit: int, batch_size: int, quality, seed: int) -> dict[str, float]:
    """Means of the model's per-image metrics over the first `limit` validation images, plus its sample metrics
    (a GAN's FID) when `quality` is given."""
    model.eval()
    sums: dict[str, float] = {}
    n = min(limit, len(split))
    images = pixels(split.images)[:n]
    labels = None if split.labels is None or not model.conditional else split.labels[:n]
    for start in range(0, n, batch_size):
        y = None if labels is None else labels[start : start + batch_size]
        values = model.evaluate(Batch(images[start : start + batch_size], y))
        for name, value in values.items():
            if value.ndim == 1:  # per-image values (not a model's extra statistics)
                sums[name] = sums.get(name, 0.0) + float(value.double().sum())
    means = {name: total / n for name, total in sums.items()}
    if quality is not None:
        torch.manual_seed(seed)
        means.update(quality.evaluate(model))
    model.train()
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, required=True)
    parser.add_argument("--eval-limit", type=int, default=1000, help="validation images per evaluation")
    parser.add_argument("overrides", nargs="*", help="gentrain config overrides naming the model and dataset")
    args = parser.parse_args()

    config = to_config(compose([*args.overrides, f"seed={args.seed}"]))
    device = torch.device("cpu")
    # gentrain seeds everything, then builds the model, then loads the data: the same initial weights here
    seed_everything(config.seed, deterministic=False)
    dataset = load_dataset(config.dataset)
    model = build_model(config.model, dataset.info).to(device)
    model.train()
    quality = None
    if model.main_metric == "fid":
        from gentrain.metrics.quality_setup import build_sample_quality

        quality = build_sample_quality(config.metrics.fid, model=model, dataset=dataset, device=device,
                                       data_root=resolve_root(getattr(config.dataset, "root", None)),
                                       seed=config.seed, progress=False)
    specs = model.optimizer_specs()
    params = {name: [p for p in spec.params if p.requires_grad] for name, spec in specs.items()}
    optimizers = {name: make_optimizer(params[name], spec.config) for name, spec in specs.items()}
    if config.trainer.lr is not None:
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = config.trainer.lr
    train = dataset.train
    labels = train.labels if train.labels is not None else torch.zeros(len(train), dtype=torch.long)
    loader = DataLoader(TensorDataset(pixels(train.images), labels), batch_size=config.trainer.batch_size,
                        shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(args.seed + 12345))

    step, seconds = 0, 0.0
    while step < args.steps:
        for x, y in loader:
            tick = time.perf_counter()
            if dataset.dynamic_binarization:
                x = (torch.rand(x.shape) * 255.0 < x).to(torch.uint8)
            plain_updates(model, params, optimizers, Batch(x, y if model.conditional else None), step)
            step += 1
            seconds += time.perf_counter() - tick
            if step % args.eval_every == 0 or step == args.steps:
                means = validate(model, dataset.val, args.eval_limit, config.trainer.eval_batch_size, quality,
                                 config.seed + 1)
                print(json.dumps({"step": step, "images": step * config.trainer.batch_size,
                                  "train_seconds": round(seconds, 2), "metrics": means}), flush=True)
            if step == args.steps:
                break


if __name__ == "__main__":
    main()
