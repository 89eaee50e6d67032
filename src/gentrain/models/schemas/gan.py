"""Options of the GANs (gentrain/models/gan.py: DCGAN and LSGAN; wgan.py; cyclegan.py), and the WGAN papers'
settings per Lipschitz constraint.

Each constraint comes with its paper's n_critic and optimizer (PAPER_SETTINGS). configs/model/wgan.yaml ties
those defaults to `model.lipschitz` through the `wgan_paper` resolver, so `model.lipschitz=clip` alone gives the
WGAN paper's settings; any of them can still be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Iterator, Optional, Union

from gentrain.config import SIZE_MAX, OptimizerConfig, OptimizerName, setting
from gentrain.registry import model_config


class CriticNorm(Enum):
    auto = "auto"  # batch norm for dcgan and wgan with clipping (as in their papers), none otherwise
    batch = "batch"
    layer = "layer"  # per-sample normalisation over (C, H, W): the WGAN-GP paper's replacement for batch norm
    none = "none"


@dataclass
class GANConfig:
    """Settings every GAN shares; dcgan and wgan add their objective's."""

    latent_dim: int = setting(100, min=1, max=SIZE_MAX)
    # channels before the output layer; doubled at each lower resolution
    generator_width: int = setting(64, min=1, max=4096)
    critic_width: int = setting(64, min=1, max=4096)  # channels after the first critic layer; doubled likewise
    critic_norm: CriticNorm = CriticNorm.auto
    conditional: bool = False  # the class label is an input to both networks
    critic_steps: int = setting(1, min=1, max=1000)  # n_critic: critic updates per generator update
    # std of Gaussian noise added to every critic input, real and fake ([-1, 1] scale)
    instance_noise: float = setting(0.0, min=0)
    # the std falls linearly to 0 over this many steps (0: constant)
    instance_noise_decay_steps: int = setting(0, min=0)
    optim_generator: OptimizerConfig = field(default_factory=OptimizerConfig)
    optim_critic: OptimizerConfig = field(default_factory=OptimizerConfig)

    # How the networks are trained, not what their weights mean: may differ when a checkpoint is loaded.
    mutable: ClassVar[frozenset[str]] = frozenset({"critic_steps", "instance_noise", "instance_noise_decay_steps"})


class DCGANLoss(Enum):
    nonsaturating = "nonsaturating"  # the generator maximises log D(G(z)) (the paper's practical choice)
    minimax = "minimax"  # the generator minimises log(1 - D(G(z))), the original game


def dcgan_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=2e-4, betas=[0.5, 0.999])  # Adam, as in Radford et al. (2016)


@model_config("dcgan")
@dataclass
class DCGANConfig(GANConfig):
    loss: DCGANLoss = DCGANLoss.nonsaturating
    optim_generator: OptimizerConfig = field(default_factory=dcgan_optimizer)
    optim_critic: OptimizerConfig = field(default_factory=dcgan_optimizer)

    mutable: ClassVar[frozenset[str]] = GANConfig.mutable | {"loss"}


@model_config("lsgan")
@dataclass
class LSGANConfig(GANConfig):
    """Least-squares GAN (Mao et al., 2017): the critic minimises 0.5 (D(x) - b)^2 + 0.5 (D(G(z)) - a)^2, the
    generator 0.5 (D(G(z)) - c)^2, with the paper's (a, b, c) = (0, 1, 1) by default (its eq. 9); (-1, 1, 0) is
    the paper's other choice (b - c = 1, b - a = 2), which minimises the Pearson chi^2 divergence."""

    fake_target: float = setting(0.0, min=-1e6, max=1e6)  # a: the critic's target for generated images
    real_target: float = setting(1.0, min=-1e6, max=1e6)  # b: the critic's target for real images
    generator_target: float = setting(1.0, min=-1e6, max=1e6)  # c: the value the generator wants D(G(z)) to take
    optim_generator: OptimizerConfig = field(default_factory=dcgan_optimizer)
    optim_critic: OptimizerConfig = field(default_factory=dcgan_optimizer)

    mutable: ClassVar[frozenset[str]] = GANConfig.mutable | {"fake_target", "real_target", "generator_target"}

    def problems(self, prefix: str) -> Iterator[str]:
        if self.fake_target == self.real_target:
            yield (f"{prefix}fake_target and {prefix}real_target are both {self.real_target}: the critic would have "
                   f"nothing to tell apart")


class Lipschitz(Enum):
    clip = "clip"
    gp = "gp"
    spectral = "spectral"


@dataclass(frozen=True)
class PaperSettings:
    critic_steps: int
    optimizer: OptimizerName
    lr: float
    betas: tuple[float, float]
    critic_norm: CriticNorm  # what `critic_norm: auto` means for this constraint


PAPER_SETTINGS = {
    # Arjovsky et al. (2017), Algorithm 1: RMSprop, lr 5e-5, c = 0.01, n_critic = 5; DCGAN critic with batch norm.
    Lipschitz.clip: PaperSettings(5, OptimizerName.rmsprop, 5e-5, (0.9, 0.999), CriticNorm.batch),
    # Gulrajani et al. (2017), Algorithm 1: Adam(1e-4, 0, 0.9), lambda = 10, n_critic = 5; no batch norm.
    Lipschitz.gp: PaperSettings(5, OptimizerName.adam, 1e-4, (0.0, 0.9), CriticNorm.none),
    # Miyato et al. (2018), the standard-CNN setting C: Adam(2e-4, 0.5, 0.999), n_dis = 1; no batch norm.
    Lipschitz.spectral: PaperSettings(1, OptimizerName.adam, 2e-4, (0.5, 0.999), CriticNorm.none),
}


def paper_setting(lipschitz: Union[Lipschitz, str], key: str) -> Any:
    """The `wgan_paper` config resolver: ${wgan_paper:${.lipschitz},lr} -> that constraint's paper value."""
    value = getattr(PAPER_SETTINGS[Lipschitz(getattr(lipschitz, "value", lipschitz))], key)
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def wgan_gp_optimizer() -> OptimizerConfig:
    gp = PAPER_SETTINGS[Lipschitz.gp]
    return OptimizerConfig(name=gp.optimizer, lr=gp.lr, betas=list(gp.betas))


@model_config("wgan", resolvers={"wgan_paper": paper_setting})
@dataclass
class WGANConfig(GANConfig):
    """Defaults are WGAN-GP's; configs/model/wgan.yaml makes the paper-dependent ones follow `lipschitz`."""

    lipschitz: Lipschitz = Lipschitz.gp
    clip_value: float = setting(0.01, above=0)  # c of weight clipping (lipschitz=clip)
    gp_weight: float = setting(10.0, min=0)  # lambda of the gradient penalty (lipschitz=gp)
    critic_steps: int = setting(PAPER_SETTINGS[Lipschitz.gp].critic_steps, min=1, max=1000)
    optim_generator: OptimizerConfig = field(default_factory=wgan_gp_optimizer)
    optim_critic: OptimizerConfig = field(default_factory=wgan_gp_optimizer)

    mutable: ClassVar[frozenset[str]] = GANConfig.mutable | {"clip_value", "gp_weight"}

    def problems(self, prefix: str) -> Iterator[str]:
        if self.lipschitz is not Lipschitz.clip and self.critic_norm is CriticNorm.batch:
            # Batch norm mixes the images of a batch, so neither a per-image gradient penalty nor per-layer
            # spectral bounds constrain the critic any more.
            yield (f"{prefix}lipschitz={self.lipschitz.value} cannot use {prefix}critic_norm=batch; use layer or "
                   f"none")


@model_config("cyclegan")
@dataclass
class CycleGANConfig:
    """CycleGAN (Zhu et al., 2017): generators G: A -> B and F: B -> A, PatchGAN critics for each domain,
    least-squares adversarial losses, cycle and identity losses, a history pool of generated images."""

    generator_width: int = setting(64, min=1, max=4096)  # the first generator layer's channels (ngf)
    critic_width: int = setting(64, min=1, max=4096)  # the first critic layer's channels (ndf)
    residual_blocks: Optional[int] = setting(None, min=1, max=64)  # null: 9 for images of 256 pixels or more, else 6
    # stride-2 layers of the PatchGAN: 3 gives the paper's 70x70 patches; null: 3 from 64 pixels, 2 below
    critic_layers: Optional[int] = setting(None, min=1, max=6)
    cycle_weight: float = setting(10.0, min=0)  # lambda of the cycle loss
    identity_weight: float = setting(0.5, min=0)  # the identity loss's weight, as a multiple of lambda
    pool_size: int = setting(50, min=0, max=10000)  # generated images each critic also sees from earlier steps
    optim_generator: OptimizerConfig = field(default_factory=dcgan_optimizer)  # Adam(2e-4, 0.5, 0.999)
    optim_critic: OptimizerConfig = field(default_factory=dcgan_optimizer)

    mutable: ClassVar[frozenset[str]] = frozenset({"cycle_weight", "identity_weight"})
