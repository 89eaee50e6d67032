"""The one interface every model implements, so that one trainer serves them all.

A model declares its optimizers and the updates that step them (a likelihood model has one update; a GAN
has a critic update every step and a generator update every n-th), how to evaluate a batch and how to
sample. Precision, clipping, EMA, logging and checkpointing live in the trainer and behave the same for
every model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Optional

import torch
from torch import Tensor, nn

from gentrain import registry
from gentrain.config import OptimizerConfig
from gentrain.data.schemas import DataInfo
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
    """Base class of every model. A model attaches itself to the config class that names it, `class
    VAE(GenerativeModel, config=VAEConfig)` (gentrain/registry.py), and implements the abstract methods.

    Its config class may declare, as class variables, `mutable`: option keys that may differ between a
    checkpoint and the run that loads it (they change how the model is trained or evaluated, not what its
    weights mean), and `evaluation_budget`: option keys that set what the end-of-run evaluation costs
    (trainer=debug shrinks them).
    """

    config_class: ClassVar[type]
    main_metric: ClassVar[str] = "bits_per_dim"  # minimised; logged as val/<name> and returned to sweepers
    progress_terms: ClassVar[tuple[str, ...]] = ("loss",)  # logged terms shown on the progress bar and lines
    conditional: bool = False  # takes class labels (set from model.conditional by the models that can)
    domains: ClassVar[int] = 1  # image domains it learns from: 2 for translation models (dataset=unpaired)
    has_temperature: ClassVar[bool] = False  # sample() scales its noise by a temperature
    # NHWC weights on a CPU too (trainer.channels_last=null): for the models it was measured to speed up
    channels_last_on_cpu: ClassVar[bool] = False
    # What evaluate(final=True) of one image costs, in training images: sizes the end-of-run bounds' test
    # images to the run (TrainerConfig.final_images_for)
    final_cost: float = 1.0
    # Per-image values of evaluate() that are random estimates (a sampled diffusion step): the evaluator also
    # reports <name>_stderr, the standard error of their mean over the images
    standard_errors: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, config: Optional[type] = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if config is not None:
            registry.implement(config, cls)
            cls.config_class = config

    def __init__(self, data: DataInfo):
        super().__init__()
        self.data = data
        if data.domains != self.domains:
            if self.domains == 2:
                raise ConfigError(f"model={self.name} translates between two image domains: use dataset=unpaired "
                                  f"(dataset.a.* and dataset.b.* choose them)")
            raise ConfigError(f"dataset=unpaired holds two image domains, for translation models (model=cyclegan); "
                              f"model={self.name} learns one distribution: pick another dataset")

    @property
    def name(self) -> str:
        """The name users select this model with (its config class's, gentrain/registry.py)."""
        return registry.name_of(self.config_class)

    # --- training -------------------------------------------------------------------------------------
    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        """One optimizer, "model", over every parameter with the options' `optim`: a single-objective model
        needs nothing more. Models with several (GANs) name each optimizer and the parameters it steps."""
        return {"model": OptimizerSpec(self.parameters(), self.cfg.optim)}

    def updates(self) -> list[Update]:
        """One step of the "model" optimizer on `loss`, every training step (GANs list theirs)."""
        return [Update("model", self.loss)]

    def loss(self, batch: Batch, step: int) -> LossOutput:
        """The training loss of a single-objective model (the default updates() steps it)."""
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
    def sample(self, n: int, *, labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
               temperature: Optional[float] = None) -> Tensor:
        """n images as floats in [0, 1], shape (n, C, H, W). A conditional model draws classes `labels` (by
        default 0, 1, ..., K-1, 0, ...); `temperature` scales the sampling noise of the models that have one
        (`has_temperature`: flows, VAEs; None: the model's default), the others refuse any value but 1."""
        if temperature not in (None, 1.0) and not self.has_temperature:
            raise ConfigError(f"{type(self).__name__} has no sampling temperature (flows and VAEs do)")
        if self.conditional and labels is None:
            labels = self.default_labels(n)
        return self.draw(n, labels if self.conditional else None, generator, temperature)

    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        """sample()'s work, with its arguments checked and defaulted."""
        raise NotImplementedError

    def complete(self, batch: Batch, generator: Optional[torch.Generator] = None) -> Tensor:
        """The batch's images with their bottom half sampled given the top half (autoregressive models)."""
        raise ConfigError(f"{type(self).__name__} cannot complete images: completion is for the PixelCNN family")

    def interpolate(self, batch: Batch, steps: int = 10) -> Tensor:
        """Images along paths between pairs of the batch's images, (pairs, steps, C, H, W) (latent-variable
        models)."""
        raise ConfigError(f"{type(self).__name__} cannot interpolate between images: interpolation is for VAEs")

    @torch.no_grad()
    def visualize(self, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Image grids for TensorBoard (name -> images in [0, 1]); `batch` is a fixed set of validation
        images."""
        return {"samples": self.sample(len(batch), generator=generator)}

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
        if not self.conditional:
            return None
        return torch.arange(n, device=self.device) % self.data.num_classes

    def require_classes(self, data: DataInfo) -> int:
        if not data.num_classes:
            raise ConfigError(
                f"model.conditional=true needs class labels, but this dataset has none usable for "
                f"conditioning; set model.conditional=false or pick a labelled dataset (model={self.name})"
            )
        return data.num_classes
