"""The one interface every model implements, so that one trainer serves them all.

A model declares its optimizers and the updates that step them (a likelihood model has one update; a GAN
has a critic update every step and a generator update every n-th), how to evaluate a batch and how to
sample. Precision, clipping, EMA, logging and checkpointing live in the trainer and behave the same for
every model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Optional

import torch
from torch import Tensor, nn

from gentrain.config import OptimizerConfig
from gentrain.data.base import DataInfo
from gentrain.data.batches import Batch
from gentrain.errors import ConfigError


@dataclass
class LossOutput:
    loss: Tensor  # the scalar to minimise
    logs: dict[str, Tensor] = field(default_factory=dict)  # detached scalars, logged as train/<name>


@dataclass
class OptimizerSpec:
    params: Iterable[nn.Parameter]
    config: OptimizerConfig


@dataclass
class Update:
    """One optimizer step of a training step."""

    optimizer: str  # key into optimizer_specs()
    loss: Callable[[Batch, int], LossOutput]  # (batch, step) -> loss; called after earlier updates stepped
    every: int = 1  # e.g. the generator once per n_critic steps
    after_step: Optional[Callable[[], None]] = None  # e.g. WGAN weight clipping


class GenerativeModel(nn.Module):
    """Base class of every model. Subclasses set `config_class` and implement the abstract methods."""

    config_class: ClassVar[type]
    main_metric: ClassVar[str] = "bits_per_dim"  # minimised; logged as val/<name> and returned to sweepers
    progress_terms: ClassVar[tuple[str, ...]] = ("loss",)  # logged terms shown on the progress bar and lines
    # Config keys that change how the model is trained or evaluated but not what its weights mean: they may
    # differ between a checkpoint and the run that loads it (optimizer settings always may).
    mutable_settings: ClassVar[frozenset[str]] = frozenset()
    # Config keys that set what the end-of-run evaluation costs (the VAE's iw_samples): trainer=debug shrinks them
    # (configs/trainer_model/debug_<model>.yaml), and a test checks that it does for every model.
    evaluation_budget: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, data: DataInfo):
        super().__init__()
        self.data = data

    # --- training -------------------------------------------------------------------------------------
    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def updates(self) -> list[Update]:
        raise NotImplementedError

    # --- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        """Per-image values (first dimension B) to average over a split. `final` marks the last test pass,
        where expensive bounds (e.g. importance-weighted) are computed."""
        raise NotImplementedError

    def evaluation_text(self, final: bool) -> str:
        """What evaluate() computes, for progress bars and the log ('bits/dim', 'IW bound k=100')."""
        return "metrics"

    def summarize(self, means: dict[str, Tensor]) -> dict[str, float]:
        """Turn split-wide means of evaluate()'s outputs into metrics (default: the scalar ones)."""
        return {name: float(value) for name, value in means.items() if value.ndim == 0}

    def metric_notes(self) -> list[str]:
        """How the reported numbers are computed, for the log and metrics.json."""
        return []

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, *, labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """n images as floats in [0, 1], shape (n, C, H, W). `temperature` scales the sampling noise for
        models that define it (flows, VAEs); the others refuse any value but 1 (`refuse_temperature`)."""
        raise NotImplementedError

    def complete(self, batch: Batch, generator: Optional[torch.Generator] = None) -> Tensor:
        """The batch's images with their bottom half sampled given the top half (autoregressive models)."""
        raise ConfigError(f"{type(self).__name__} cannot complete images: completion is for the PixelCNN family")

    def interpolate(self, batch: Batch, steps: int = 10) -> Tensor:
        """Images along paths between pairs of the batch's images, (pairs, steps, C, H, W) (latent-variable models)."""
        raise ConfigError(f"{type(self).__name__} cannot interpolate between images: interpolation is for VAEs")

    def refuse_temperature(self, temperature: float) -> None:
        if temperature != 1.0:
            raise ConfigError(f"{type(self).__name__} has no sampling temperature (flows and VAEs do)")

    @torch.no_grad()
    def visualize(self, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Image grids for TensorBoard (name -> images in [0, 1]); `batch` is a fixed set of validation images."""
        return {"samples": self.sample(len(batch), labels=self.default_labels(len(batch)), generator=generator)}

    def compile_targets(self) -> list[nn.Module]:
        """The networks trainer.compile=true compiles (each module's forward): by default every direct child
        that has parameters. Evaluation and sampling run them eagerly (evaluation.py)."""
        return [m for m in self.children() if any(True for _ in m.parameters())]

    def ema_module(self) -> nn.Module:
        """The part whose weights an EMA averages (a GAN averages only its generator)."""
        return self

    # --- helpers --------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def default_labels(self, n: int) -> Optional[Tensor]:
        """Labels 0, 1, ..., K-1, 0, ... for sample grids of a conditional model; None otherwise."""
        if not getattr(self, "conditional", False):
            return None
        return torch.arange(n, device=self.device) % self.data.num_classes

    @staticmethod
    def require_classes(data: DataInfo, model_name: str) -> int:
        if not data.num_classes:
            raise ConfigError(
                f"model.conditional=true needs class labels, but this dataset has none usable for "
                f"conditioning; set model.conditional=false or pick a labelled dataset ({model_name})"
            )
        return data.num_classes
