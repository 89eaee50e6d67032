"""`gentrain-sample run=<run dir> n=64`: samples from a trained run, as a PNG grid and raw uint8 arrays.

    gentrain-sample run=outputs/2026-11-23/14-02-11 n=64 seed=1
    gentrain-sample run=... labels=[3,3,3,3]                   # conditional models: these classes
    gentrain-sample run=... temperature=0.7                    # flows and VAEs
    gentrain-sample run=... complete=top_half n=16             # PixelCNN family: finish test images
    gentrain-sample run=... interpolate=true n=16              # VAEs: paths between test images
    gentrain-sample run=... checkpoint=last dataset.root=/data # another checkpoint; data for completion

The model is rebuilt from the run's saved config and checkpoint (best.pt unless `checkpoint=` names another),
with its EMA weights when the run kept them. Output: <run>/samples/<name>.png and <name>.npz (images as uint8
pixel values in [0, levels), labels, and the settings).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from gentrain.data import load_dataset
from gentrain.data.batches import Batch, eval_batches
from gentrain.errors import ConfigError
from gentrain.evaluation import Evaluator
from gentrain.logger import image_grid
from gentrain.runs import LoadedRun, load_run, run_command
from gentrain.runtime import pick_device

log = logging.getLogger("gentrain.sample")

OPTIONS: dict[str, Any] = {
    "run": None, "n": 64, "checkpoint": "best", "seed": 0, "labels": None, "temperature": 1.0,
    "complete": None, "interpolate": False, "device": "auto", "name": None,
}


def _labels(run: LoadedRun, value: Any, n: int, device: torch.device) -> Optional[torch.Tensor]:
    if value is None:
        return run.model.default_labels(n)
    if not getattr(run.model, "conditional", False):
        raise ConfigError("labels= is for conditional models; this run is not conditional")
    labels = torch.as_tensor([value] * n if isinstance(value, int) else value, device=device).long()
    if len(labels) != n or labels.min() < 0 or labels.max() >= run.data.num_classes:
        raise ConfigError(f"labels= needs {n} class ids (or one) in [0, {run.data.num_classes})")
    return labels


def _test_images(run: LoadedRun, n: int, device: torch.device) -> Batch:
    """The first n test images (completion and interpolation start from real images)."""
    dataset = load_dataset(run.config.dataset)
    batch = next(eval_batches(dataset.test, n, use_labels=bool(getattr(run.model, "conditional", False))))
    return Batch(batch.x.to(device), None if batch.y is None else batch.y.to(device))


def draw(options: dict[str, Any], overrides: list[str]) -> tuple[Path, Path]:
    device = pick_device(str(options["device"]))
    run = load_run(Path(options["run"]), checkpoint=str(options["checkpoint"]), overrides=overrides, device=device)
    n, seed = int(options["n"]), int(options["seed"])
    if n <= 0:
        raise ConfigError(f"n must be positive, got {n}")
    evaluator = Evaluator(run.model, None, batch_size=n, precision=run.config.trainer.precision, device=device,
                          seed=seed, ema=run.ema)
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = None
    with evaluator.eval_mode():
        if options["complete"] is not None:
            if options["complete"] != "top_half":
                raise ConfigError(f"complete= accepts top_half, got {options['complete']!r}")
            batch = _test_images(run, n, device)
            completed = run.model.complete(batch, generator)
            originals = batch.x.float() / (run.data.levels - 1)
            images = completed
            grid = torch.stack([originals, completed])  # the test images above, their completions below
            labels, kind = batch.y, "completion"
        elif options["interpolate"]:
            batch = _test_images(run, 2 * max(1, n // 10), device)
            grid = run.model.interpolate(batch)
            images, kind = grid.flatten(0, 1), "interpolation"
        else:
            labels = _labels(run, options["labels"], n, device)
            images = run.model.sample(n, labels=labels, generator=generator, temperature=float(options["temperature"]))
            grid, kind = images, "samples"

    name = options["name"] or f"{kind}_step{run.step:08d}_seed{seed}" + (
        f"_t{options['temperature']}" if float(options["temperature"]) != 1.0 else "")
    out_dir = run.run_dir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    png, npz = out_dir / f"{name}.png", out_dir / f"{name}.npz"
    from torchvision.utils import save_image

    save_image(image_grid(grid), png)
    pixels = (images.float().clamp(0, 1) * (run.data.levels - 1)).round().to(torch.uint8).cpu().numpy()
    np.savez_compressed(
        npz, images=pixels, labels=np.array([]) if labels is None else labels.cpu().numpy(),
        levels=run.data.levels, checkpoint=str(run.checkpoint.relative_to(run.run_dir)), step=run.step, seed=seed,
        temperature=float(options["temperature"]), kind=kind,
    )
    return png, npz


def main(argv: Optional[list[str]] = None) -> None:
    def action(options: dict[str, Any], overrides: list[str]) -> str:
        png, npz = draw(options, overrides)
        return f"wrote {png} and {npz}"

    run_command("gentrain-sample", __doc__, OPTIONS, action, argv)


if __name__ == "__main__":
    main()
