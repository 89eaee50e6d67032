"""Everything a run records: TensorBoard scalars and images, PNG sample grids, hparams and metrics.json."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchvision.utils import make_grid, save_image

from gentrain.files import write_file

log = logging.getLogger(__name__)


def image_grid(images: Tensor) -> Tensor:
    """(N, C, H, W) -> a square-ish grid; (rows, cols, C, H, W) -> exactly that layout. Values in [0, 1]."""
    images = images.detach().float().clamp(0.0, 1.0).cpu()
    if images.ndim == 5:
        rows, cols = images.shape[:2]
        return make_grid(images.flatten(0, 1), nrow=cols, padding=2, pad_value=1.0)
    return make_grid(images, nrow=max(1, math.ceil(math.sqrt(images.shape[0]))), padding=2, pad_value=1.0)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"trainer.lr": 0.001, ...} with values TensorBoard's hparams view accepts (None and lists
    as text)."""
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


# Always in the HPARAMS tab, besides the model's own options and whatever the command line set.
HPARAM_KEYS = ("name", "seed", "trainer.lr", "trainer.batch_size", "trainer.max_steps", "trainer.max_epochs",
               "trainer.ema_decay", "trainer.precision", "dataset.binarize", "dataset.image_size")


def run_hparams(config: Mapping[str, Any], overrides: list[str], model: str, dataset: str) -> dict[str, Any]:
    """What TensorBoard's HPARAMS tab shows for a run: the model and dataset names, the keys set on the command
    line (a sweep's swept keys among them), a short list of the usual ones and the model's options, with
    booleans as booleans; unset values and URLs are left out unless they were set on the command line."""
    flat = flatten_config(config)
    given = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)  # key -> the value as typed
    model_options = [k for k in flat if k.startswith("model.") and (k.count(".") == 1 or k.endswith(".lr"))]
    shown = {"model": model, "dataset": dataset}
    for key in [*HPARAM_KEYS, *model_options, *given]:
        value = flat.get(key, given.get(key))  # a group choice (trainer=debug) is no leaf of the config
        if key in given or (value not in (None, "None") and not str(value).startswith(("http://", "https://"))):
            shown.setdefault(key, value)
    return {k: ("null" if v in (None, "None") else v) for k, v in shown.items()}


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
        for name, images in grids.items():
            grid = image_grid(images)
            self.writer.add_image(f"images/{name}", grid, step)  # after the scalars in TensorBoard's views
            filename = f"step_{step:06d}.png" if name == "samples" else f"{name}_step_{step:06d}.png"
            write_png(self.samples_dir / filename, grid, root=self.run_dir)

    def text(self, tag: str, text: str) -> None:
        if self.enabled:
            self.writer.add_text(tag, text)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The run's hyperparameters with its final metrics, in this run's own event file (hparams view).

        `metrics` maps scalar tags already logged (e.g. test/bits_per_dim) to their final values.
        """
        if not self.enabled:
            return
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summaries(hparams, metrics):
            file_writer.add_summary(summary, step)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def hparams_summaries(hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> list:
    """torch's hparams summaries, with booleans stored as booleans (torch files them as the numbers 0 and 1)."""
    from tensorboard.plugins.hparams.api_pb2 import DataType
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    booleans = {k: v for k, v in hparams.items() if isinstance(v, bool)}
    summaries = hparams_summary({k: int(v) if k in booleans else v for k, v in hparams.items()}, dict(metrics))
    for summary in summaries[:2]:  # the experiment (the columns) and the session start (this run's values)
        metadata = summary.value[0].metadata.plugin_data
        data = HParamsPluginData.FromString(metadata.content)
        for info in data.experiment.hparam_infos:
            if info.name in booleans:
                info.type = DataType.DATA_TYPE_BOOL
        for name, value in booleans.items():
            if data.HasField("session_start_info"):
                data.session_start_info.hparams[name].bool_value = value
        metadata.content = data.SerializeToString()
    return list(summaries)


def write_json(path: Path, data: Mapping[str, Any], *, root: Optional[Path] = None, replace: bool = True) -> None:
    """JSON through files.write_file: complete or absent, never through a link."""
    write_file(path, json.dumps(data, indent=2, sort_keys=False) + "\n", root=root, replace=replace)


def write_png(path: Path, image: Tensor, *, root: Optional[Path] = None, replace: bool = True) -> None:
    """An image (C, H, W) in [0, 1] as a PNG, through files.write_file (a Ctrl-C or a full disk mid-write leaves
    no truncated image under the final name)."""
    write_file(path, lambda f: save_image(image, f, format="png"), root=root, replace=replace)
