"""gentrain from Python (a notebook, a script): the few names the commands are built on.

    import gentrain
    run = gentrain.load_run("outputs/2026-12-01/14-02-11")      # the model with its best (EMA) weights
    images = run.sample(16, seed=0)                             # (16, C, H, W) floats in [0, 1]
    model = gentrain.build_model("vae", dataset="mnist", latent_dim=8)
    metrics = gentrain.train(["model=vae", "trainer=debug"])    # what `gentrain model=vae trainer=debug` does

`train` runs exactly what the `gentrain` command runs for one job (gentrain/run.py): the same checks, run
directory, lock, logs and files; `load_run` is what gentrain-sample and gentrain-eval load (gentrain/runs.py).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from gentrain.config import Config
from gentrain.data.schemas import DataInfo
from gentrain.models.base import GenerativeModel

PathLike = Union[str, Path]


@dataclass
class Run:
    """A finished (or running) run, loaded: its model in eval mode with the weights it is evaluated with (the
    EMA average when the run kept one), its config, the shape of its data and the checkpoint they came
    from."""

    path: Path
    model: GenerativeModel
    config: Config
    data: DataInfo
    step: int
    checkpoint: Path

    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, labels: Optional[torch.Tensor] = None,
               temperature: float = 1.0) -> torch.Tensor:
        """n images from the model as floats in [0, 1], (n, C, H, W); the same seed gives the same images."""
        generator = torch.Generator(device=self.model.device).manual_seed(seed)
        if labels is None:
            labels = self.model.default_labels(n)
        return self.model.sample(n, labels=labels, generator=generator, temperature=temperature)


def load_run(path: PathLike, *, checkpoint: str = "best", device: str = "auto",
             overrides: Sequence[str] = ()) -> Run:
    """Load a run directory: `checkpoint` is best, last or a file; `overrides` change evaluation settings
    (e.g. ["model.iw_samples=1000"]) or where the data is (["dataset.root=/data"])."""
    from gentrain.runs import load_run as load
    from gentrain.runtime import pick_device

    loaded = load(Path(path), checkpoint=checkpoint, overrides=list(overrides), device=pick_device(device))
    if loaded.ema is not None:  # the weights the run evaluates and samples with, for good
        with torch.no_grad():
            torch._foreach_copy_(loaded.ema.params, loaded.ema.shadow)
    return Run(loaded.run_dir, loaded.model, loaded.config, loaded.data, loaded.step, loaded.checkpoint)


def build_model(model: str, *, dataset: str = "mnist", overrides: Sequence[str] = (),
                **options: Any) -> GenerativeModel:
    """A new, untrained model as `gentrain model=<model> dataset=<dataset>` would build it: `options` set the
    model's own settings (build_model("vae", latent_dim=8)), `overrides` any other
    (["dataset.binarize=static"])."""
    from gentrain.composition import build_model as build
    from gentrain.composition import compose, to_config

    options_given = (f"model.{k}={v}" for k, v in options.items())
    chosen = [f"model={model}", f"dataset={dataset}", *overrides, *options_given]
    config = to_config(compose(chosen))
    return build(config.model, config.dataset.data_info())


def train(overrides: Sequence[str] = (), *, run_dir: Optional[PathLike] = None) -> dict[str, Any]:
    """Train as `gentrain <overrides>` would, in this process, and return the final metrics (metrics.json's
    content): the same checks first (a bad value leaves no directory behind), `trainer.resume=<run>`
    continuing that run in its own directory, the same run directory, lock, logs and files. The run goes to
    `run_dir`, else where the command would put it (outputs/<date>/<time>)."""
    from omegaconf import open_dict, read_write

    from gentrain import run_names
    from gentrain.cli import check_values_first, resume_arguments
    from gentrain.composition import compose
    from gentrain.run import run_in_directory

    arguments = list(overrides) + ([f"hydra.run.dir={Path(run_dir).absolute()}"] if run_dir else [])
    arguments = resume_arguments(arguments)
    check_values_first(arguments)
    run_names.set_launch_time(datetime.datetime.now())
    full = compose(arguments, with_hydra=True)
    directory = Path(full.hydra.run.dir).absolute()  # resolved while the config is whole (it names the run)
    hydra_cfg = full.hydra
    with read_write(full), open_dict(full):
        del full["hydra"]
    # train.log gets the whole story, as with the command
    logging.getLogger("gentrain").setLevel(logging.INFO)
    return run_in_directory(full, directory, hydra_cfg)
