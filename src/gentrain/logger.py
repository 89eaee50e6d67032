"""Everything a run records: TensorBoard scalars and images, PNG sample grids, hparams and metrics.json."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchvision.utils import make_grid, save_image

log = logging.getLogger(__name__)


def image_grid(images: Tensor) -> Tensor:
    """(N, C, H, W) -> a square-ish grid; (rows, cols, C, H, W) -> exactly that layout. Values in [0, 1]."""
    images = images.detach().float().clamp(0.0, 1.0).cpu()
    if images.ndim == 5:
        rows, cols = images.shape[:2]
        return make_grid(images.flatten(0, 1), nrow=cols, padding=2, pad_value=1.0)
    return make_grid(images, nrow=max(1, math.ceil(math.sqrt(images.shape[0]))), padding=2, pad_value=1.0)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"trainer.lr": 0.001, ...} with values TensorBoard's hparams view accepts."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class RunLogger:
    """Writes into the run directory: the event file at its root and PNG grids under samples/.

    A disabled logger (processes other than rank 0 under torchrun) writes nothing.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None, enabled: bool = True):
        """`purge_step`: when continuing a run, hide the events its previous process wrote from that step on."""
        self.run_dir = run_dir
        self.samples_dir = run_dir / "samples"
        self.enabled = enabled
        self.writer = SummaryWriter(log_dir=str(run_dir), flush_secs=30, purge_step=purge_step) if enabled else None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def images(self, grids: Mapping[str, Tensor], step: int) -> None:
        if not self.enabled:
            return
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        for name, images in grids.items():
            grid = image_grid(images)
            self.writer.add_image(name, grid, step)
            filename = f"step_{step:06d}.png" if name == "samples" else f"{name}_step_{step:06d}.png"
            save_image(grid, self.samples_dir / filename)

    def text(self, tag: str, text: str) -> None:
        if self.enabled:
            self.writer.add_text(tag, text)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The run's hyperparameters with its final metrics, in this run's own event file (hparams view).

        `metrics` maps scalar tags already logged (e.g. test/bits_per_dim) to their final values.
        """
        if not self.enabled:
            return
        experiment, start, end = hparams_summary(dict(hparams), dict(metrics))
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary, step)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
