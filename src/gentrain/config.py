"""Structured-config schemas for the top-level config, the trainer and the optimizers,
and the rules for values.

Every YAML file in configs/ is validated against a dataclass registered in Hydra's ConfigStore, so a misspelt
key (`trainer.max_stpes=1`) or a wrong type (`trainer.lr=abc`) fails when the config is composed, with Hydra's
message naming the key. Models and datasets keep their schemas next to their code
(`models/vae.py: VAEConfig`).

Values that have the right type but cannot work (a batch size of 0, a negative seed, an image side of 10^6)
are declared where the field is: `setting(128, min=1, max=65536)`. `problems(config)` walks a composed config
and lists every value outside its declared range, plus the cross-field rules a schema states in its `problems`
method, before any data is read (settings.py). This module imports nothing else from gentrain, so any module
may import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterator, Optional

from omegaconf import MISSING

# The rules for values live in settings.py; these names are imported from here by most of gentrain.
from gentrain.settings import SEED_MAX, SIZE_MAX, Rule, problems, setting  # noqa: F401


# --- the schemas shared by every run ------------------------------------------------------------------------
class OptimizerName(Enum):
    adam = "adam"
    adamw = "adamw"
    rmsprop = "rmsprop"
    sgd = "sgd"


@dataclass
class OptimizerConfig:
    """One optimizer. Models carry their papers' defaults; `trainer.lr` overrides every optimizer's lr."""

    name: OptimizerName = OptimizerName.adam
    lr: float = setting(1e-3, above=0)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], items=2, min=0, below=1)  # adam / adamw
    weight_decay: float = setting(0.0, min=0)
    eps: float = setting(1e-8, above=0)
    momentum: float = setting(0.0, min=0, below=1)  # rmsprop / sgd


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16 (CUDA with bf16 support, or CPU)
    fp16 = "fp16"  # autocast to float16 with a gradient scaler (CUDA only)


class LRSchedule(Enum):
    constant = "constant"
    cosine = "cosine"  # cosine decay to zero over the run, after the warm-up
    linear = "linear"  # linear decay to zero over the run, after the warm-up
    linear_second_half = "linear_second_half"  # constant for the first half, then linear to zero (CycleGAN)


class NonFinitePolicy(Enum):
    skip = "skip"  # skip the optimizer step, count it, stop after trainer.max_nonfinite in a row
    halt = "halt"  # stop at the first non-finite loss or gradient


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


@dataclass
class TrainerConfig:
    """The one training loop's settings (gentrain/trainer.py)."""

    # When to stop: whichever limit is reached first (null = no limit; at least one must be set).
    max_steps: Optional[int] = setting(None, min=1)
    max_epochs: Optional[int] = setting(10, min=1)
    max_minutes: Optional[float] = setting(None, above=0)

    batch_size: int = setting(128, min=1, max=SIZE_MAX)
    eval_batch_size: int = setting(500, min=1, max=SIZE_MAX)
    lr: Optional[float] = setting(None, above=0)  # overrides the lr of every optimizer the model declares
    lr_schedule: LRSchedule = LRSchedule.constant
    warmup_steps: int = setting(0, min=0)
    # max global L2 norm per optimizer; null = no clipping
    grad_clip: Optional[float] = setting(None, above=0)
    precision: Precision = Precision.fp32
    # e.g. 0.999: evaluation and samples use the EMA
    ema_decay: Optional[float] = setting(None, above=0, below=1)
    device: str = setting("auto", pattern=DEVICE_PATTERN, meaning="auto, cpu, cuda, cuda:N or mps")
    compile: bool = False  # torch.compile the model's networks for training (evaluation stays eager)
    # NHWC weights for convolutional models; null = on CUDA, and on a CPU for the models
    # measured faster with it
    channels_last: Optional[bool] = None
    deterministic: bool = False
    # CPU threads for torch; null: the cores available to this process divided by the processes sharing them
    # (torchrun's processes on this node, joblib's n_jobs)
    num_threads: Optional[int] = setting(None, min=1, max=1024)

    # steps between evaluations (validation, samples, checkpoint); 0 = at the end
    eval_every: int = setting(1000, min=0)
    eval_limit: Optional[int] = setting(None, min=1)  # cap on images per evaluation, val and test; null = all
    # test images that get the model's expensive end-of-run bounds (the VAE's IW bound); null: sized to the
    # run's planned training (final_images_for), never to how fast the machine is
    final_images: Optional[int] = setting(None, min=1)
    log_every: int = setting(50, min=1)  # steps between train/ scalars (and progress lines, see log_seconds)
    # without a terminal (logs, pipes, SLURM) a progress line every log_every steps or log_seconds,
    # whichever later
    log_seconds: float = setting(30.0, min=0)
    num_samples: int = setting(64, min=1, max=1024)  # images in each sample grid
    keep_checkpoints: int = setting(3, min=1)  # step checkpoints kept besides best.pt
    progress_bar: bool = True  # tqdm bars on a terminal (never in redirected output)
    # stop after this many evaluations in a row without a better validation main metric; the final test pass
    # then scores the best checkpoint (early stopping, as in the MADE and NADE papers). null: off
    early_stopping: Optional[int] = setting(None, min=1)
    nonfinite: NonFinitePolicy = NonFinitePolicy.skip
    max_nonfinite: int = setting(10, min=1)
    # Continue a run: a run directory or checkpoint file (the run's own config and directory are reused),
    # or 'auto' = the latest checkpoint of this run directory if there is one, else start fresh.
    resume: Optional[str] = None

    def planned_steps(self, steps_per_epoch: int) -> Optional[int]:
        """The step count the run stops at (None when only max_minutes limits it)."""
        limits = [n for n in (self.max_steps, self.max_epochs and self.max_epochs * steps_per_epoch) if n]
        return min(limits) if limits else None

    def final_images_for(self, steps_per_epoch: int, final_cost: float) -> Optional[int]:
        """trainer.final_images, or the planned training images divided by what the end-of-run bounds of one
        image cost in training images (the model's `final_cost`), at least one evaluation batch: the end of a
        short run costs about as much as its training, and the same command covers the same images on any
        machine. None (every image) when only max_minutes limits the run."""
        if self.final_images is not None:
            return self.final_images
        steps = self.planned_steps(steps_per_epoch)
        if steps is None:
            return None
        return max(self.eval_batch_size, math.ceil(steps * self.batch_size / final_cost))

    def limits_text(self, steps_per_epoch: int) -> str:
        parts = [text for limit, text in [
            (self.max_steps, f"{self.max_steps} steps"),
            (self.max_epochs, f"{self.max_epochs} epochs ({steps_per_epoch} steps each)"),
            (self.max_minutes, f"{self.max_minutes} minutes"),
        ] if limit]
        return " or ".join(parts) + (", whichever comes first" if len(parts) > 1 else "")

    def problems(self, prefix: str) -> Iterator[str]:
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            yield (f"the run would never stop: set {prefix}max_steps, {prefix}max_epochs or "
                   f"{prefix}max_minutes")
        if self.early_stopping and not self.eval_every:
            yield f"{prefix}early_stopping counts evaluations: set {prefix}eval_every too (it is 0)"


class FeatureExtractorName(Enum):
    auto = "auto"  # classifier for MNIST, inception for every other dataset
    inception = "inception"  # the standard FID Inception-v3 (2048-d pool features), as in the papers
    classifier = "classifier"  # a small classifier gentrain trains on the dataset's labels (offline)


@dataclass
class FeatureClassifierConfig:
    """The classifier trained once per dataset as an offline feature extractor
    (gentrain/metrics/classifier.py).

    Its settings are part of the cache key: FIDs are comparable only between runs that share them.
    """

    steps: int = setting(2000, min=1, max=10**7)
    batch_size: int = setting(128, min=1, max=SIZE_MAX)
    lr: float = setting(2e-3, above=0)
    # channels of the first convolution block; doubled in the next two
    width: int = setting(16, min=1, max=1024)
    # size of the penultimate layer, the features FID compares
    features: int = setting(128, min=1, max=SIZE_MAX)


@dataclass
class FIDConfig:
    """FID and KID of generated samples against the training split (gentrain/metrics/sample_quality.py)."""

    # null: on for models whose main metric is fid (the GANs), off for the others
    enabled: Optional[bool] = None
    features: FeatureExtractorName = FeatureExtractorName.auto
    # generated images per evaluation (the papers use 50000)
    num_samples: int = setting(10000, min=2, max=10**6)
    batch_size: int = setting(250, min=1, max=SIZE_MAX)  # images per sampling and feature-extraction call
    # the FID Inception weights; null: torch hub cache
    inception_weights: Optional[str] = setting(None, path="file")
    kid_subsets: int = setting(100, min=1, max=10**5)  # KID: mean and std over this many random subsets ...
    kid_subset_size: int = setting(1000, min=2, max=10**6)  # ... of this many images from each side
    # improved precision and recall against KID's reference subset, k-th nearest neighbour radii; 0: off
    precision_recall_k: int = setting(3, min=0, max=1000)
    # Inception features only: IS mean and std over splits
    inception_score_splits: int = setting(10, min=1, max=1000)
    classifier: FeatureClassifierConfig = field(default_factory=FeatureClassifierConfig)

    def problems(self, prefix: str) -> Iterator[str]:
        if self.precision_recall_k >= self.num_samples:
            yield (f"{prefix}precision_recall_k={self.precision_recall_k} needs more than that many samples "
                   f"({prefix}num_samples={self.num_samples})")
        if self.kid_subset_size > self.num_samples:
            yield (f"{prefix}kid_subset_size={self.kid_subset_size} is larger than {prefix}num_samples="
                   f"{self.num_samples}, the images KID compares per side: lower it or raise num_samples")


@dataclass
class MetricsConfig:
    """Metrics computed from model samples, for any model."""

    fid: FIDConfig = field(default_factory=FIDConfig)


@dataclass
class Config:
    """The composed config: one model, one dataset, the trainer, the sample metrics and the seed."""

    model: Any = MISSING
    dataset: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    seed: int = setting(0, min=0, max=SEED_MAX)
    # names the run (outputs/<date>/<time>_<name>, TensorBoard, metrics.json)
    name: Optional[str] = setting(None, pattern=r"[\w.+=-]+",
                                  meaning="a name of letters, digits and . _ - + =")
