"""Structured-config schemas for the top-level config, the trainer and the optimizers.

Every YAML file in configs/ is validated against a dataclass registered here in Hydra's ConfigStore, so a
misspelt key (`trainer.max_stpes=1`) or a wrong type (`trainer.lr=abc`) fails when the config is composed,
with Hydra's message naming the key. Models and datasets keep their schemas next to their code
(`gentrain/models/vae.py: VAEConfig`, `gentrain/data/mnist.py: MNISTConfig`); `register_configs` stores
them under `schema_model_<name>` / `schema_dataset_<name>`, names outside the config groups so that
`gentrain --help` lists only the options a user can pick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gentrain.errors import ConfigError


class OptimizerName(Enum):
    adam = "adam"
    adamw = "adamw"
    rmsprop = "rmsprop"
    sgd = "sgd"


@dataclass
class OptimizerConfig:
    """One optimizer. Models carry their papers' defaults; `trainer.lr` overrides every optimizer's lr."""

    name: OptimizerName = OptimizerName.adam
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / adamw
    weight_decay: float = 0.0
    eps: float = 1e-8
    momentum: float = 0.0  # rmsprop / sgd


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16 (CUDA with bf16 support, or CPU)
    fp16 = "fp16"  # autocast to float16 with a gradient scaler (CUDA only)


class LRSchedule(Enum):
    constant = "constant"
    cosine = "cosine"  # cosine decay to zero over the run, after the warm-up
    linear = "linear"  # linear decay to zero over the run, after the warm-up


class NonFinitePolicy(Enum):
    skip = "skip"  # skip the optimizer step, count it, stop after trainer.max_nonfinite in a row
    halt = "halt"  # stop at the first non-finite loss or gradient


@dataclass
class TrainerConfig:
    """The one training loop's settings (gentrain/trainer.py)."""

    # When to stop: whichever limit is reached first (null = no limit; at least one must be set).
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = 10
    max_minutes: Optional[float] = None

    batch_size: int = 128
    eval_batch_size: int = 500
    lr: Optional[float] = None  # overrides the lr of every optimizer the model declares
    lr_schedule: LRSchedule = LRSchedule.constant
    warmup_steps: int = 0
    grad_clip: Optional[float] = None  # max global L2 norm per optimizer; null = no clipping
    precision: Precision = Precision.fp32
    ema_decay: Optional[float] = None  # e.g. 0.999; samples and evaluation then use the EMA weights
    device: str = "auto"  # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
    compile: bool = False  # torch.compile the model's networks for training (evaluation stays eager)
    channels_last: Optional[bool] = None  # NHWC weights for convolutional models; null = on CUDA only
    deterministic: bool = False

    eval_every: int = 1000  # steps between evaluations (validation, samples, checkpoint); 0 = at the end only
    eval_limit: Optional[int] = None  # cap on images per evaluation, val and test (for quick checks); null = all
    log_every: int = 50  # steps between train/ scalars
    num_samples: int = 64  # images in each sample grid
    keep_checkpoints: int = 3  # step checkpoints kept besides best.pt
    progress_bar: bool = True  # tqdm bars on a terminal (never in redirected output)
    nonfinite: NonFinitePolicy = NonFinitePolicy.skip
    max_nonfinite: int = 10
    # Continue a run: a run directory or checkpoint file (the run's own config and directory are reused),
    # or 'auto' = the latest checkpoint of this run directory if there is one, else start fresh.
    resume: Optional[str] = None


class FeatureExtractorName(Enum):
    auto = "auto"  # classifier for MNIST, inception for every other dataset
    inception = "inception"  # the standard FID Inception-v3 (2048-d pool features), as in the papers
    classifier = "classifier"  # a small classifier gentrain trains on the dataset's labels (offline)


@dataclass
class FeatureClassifierConfig:
    """The classifier trained once per dataset as an offline feature extractor (gentrain/metrics/classifier.py).

    Its settings are part of the cache key: FIDs are comparable only between runs that share them.
    """

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 16  # channels of the first convolution block; doubled in each of the next two
    features: int = 128  # size of the penultimate layer, the features FID and KID compare


@dataclass
class FIDConfig:
    """FID and KID of generated samples against the training split (gentrain/metrics/sample_quality.py)."""

    enabled: Optional[bool] = None  # null: on for models whose main metric is fid (the GANs), off for the others
    features: FeatureExtractorName = FeatureExtractorName.auto
    num_samples: int = 10000  # generated images per evaluation (the papers use 50000)
    batch_size: int = 250  # images per sampling and feature-extraction call
    inception_weights: Optional[str] = None  # local file of the FID Inception weights; null: the torch hub cache
    kid_subsets: int = 100  # KID: mean and std over this many random subsets ...
    kid_subset_size: int = 1000  # ... of this many images from each side
    classifier: FeatureClassifierConfig = field(default_factory=FeatureClassifierConfig)


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
    seed: int = 0


def check_trainer_config(cfg: TrainerConfig) -> None:
    """Reject values that compose but cannot work, with a one-line reason."""
    positive = {
        "batch_size": cfg.batch_size,
        "eval_batch_size": cfg.eval_batch_size,
        "log_every": cfg.log_every,
        "num_samples": cfg.num_samples,
        "max_nonfinite": cfg.max_nonfinite,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"trainer.{key} must be positive, got {value}")
    for key in ("max_steps", "max_epochs", "max_minutes"):
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"trainer.{key} must be positive or null, got {value}")
    if cfg.max_steps is None and cfg.max_epochs is None and cfg.max_minutes is None:
        raise ConfigError("the run would never stop: set trainer.max_steps, trainer.max_epochs or trainer.max_minutes")
    if cfg.eval_every < 0 or cfg.warmup_steps < 0 or cfg.keep_checkpoints < 1:
        raise ConfigError("trainer.eval_every and trainer.warmup_steps must be >= 0 and trainer.keep_checkpoints >= 1")
    if cfg.lr is not None and cfg.lr <= 0:
        raise ConfigError(f"trainer.lr must be positive, got {cfg.lr}")
    if cfg.grad_clip is not None and cfg.grad_clip <= 0:
        raise ConfigError(f"trainer.grad_clip must be positive or null, got {cfg.grad_clip}")
    if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
        raise ConfigError(f"trainer.ema_decay must be in (0, 1) or null, got {cfg.ema_decay}")
    if cfg.eval_limit is not None and cfg.eval_limit <= 0:
        raise ConfigError(f"trainer.eval_limit must be positive or null, got {cfg.eval_limit}")


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    from gentrain.data import DATASETS
    from gentrain.distributed import launch_time
    from gentrain.models import CONFIG_RESOLVERS, MODELS

    for name, resolver in {"launch_time": launch_time, **CONFIG_RESOLVERS}.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
    store = ConfigStore.instance()
    store.store(name="gentrain_config", node=Config)
    for name, model_class in MODELS.items():
        store.store(name=f"schema_model_{name}", node=model_class.config_class)
    for name, dataset in DATASETS.items():
        store.store(name=f"schema_dataset_{name}", node=dataset.config_class)
