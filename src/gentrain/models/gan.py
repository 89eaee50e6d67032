"""Adversarial models: the DCGAN generator and critic shared by every GAN, and the DCGAN objective.

The networks follow Radford et al. (2016): the generator maps a latent vector through transposed
convolutions with batch norm and ReLU to a tanh image; the critic (DCGAN's discriminator) mirrors it with
strided convolutions and leaky ReLU. Both are sized by the image side (28, 32, 64, ...), and take the class
label as an extra input when `model.conditional` is set. `GAN` holds everything a GAN shares (networks,
[-1, 1] scaling, instance noise, the two updates, sampling, evaluation); subclasses only define the losses:
`DCGAN` and `LSGAN` here, `WGAN` (clipping, gradient penalty, spectral norm) in wgan.py.

A GAN has no likelihood: its main metric is the FID of its samples (gentrain/metrics/sample_quality.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.errors import ConfigError
from gentrain.models.base import GenerativeModel, LossOutput, OptimizerSpec, Update
from gentrain.models.schemas.gan import CriticNorm, DCGANConfig, DCGANLoss, GANConfig, LSGANConfig


def network_layout(height: int, width: int, model_name: str) -> tuple[int, int]:
    """Halve the side while it is even and larger than 7: 28 -> 7, 32 -> 4, 64 -> 4. -> (start side, halvings)."""
    size, halvings = height, 0
    while size % 2 == 0 and size > 7:
        size //= 2
        halvings += 1
    if height != width or size > 7 or halvings < 2:
        raise ConfigError(
            f"model={model_name} needs square images whose side halves at least twice down to 7 or less "
            f"(28, 32, 64, ...); got {height}x{width}. Resize with dataset.image_size"
        )
    return size, halvings


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN's initialisation: convolutions from N(0, 0.02), batch-norm scales from N(1, 0.02), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """Latent vector (and one-hot label) -> image in [-1, 1] through transposed convolutions."""

    def __init__(self, latent_dim: int, channels: int, layout: tuple[int, int], width: int, num_classes: int):
        super().__init__()
        start, halvings = layout
        self.num_classes = num_classes
        hidden = width * 2 ** (halvings - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim + num_classes, hidden, start, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(True),
        ]
        for _ in range(halvings - 1):
            layers += [nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(hidden // 2), nn.ReLU(True)]
            hidden //= 2
        layers += [nn.ConvTranspose2d(hidden, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: Tensor, labels: Optional[Tensor]) -> Tensor:
        if self.num_classes:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        return self.net(z[:, :, None, None])


class Critic(nn.Module):
    """Image (and label maps) -> one unbounded score per image: DCGAN's discriminator without the sigmoid.

    The first layer has no normalisation (as in DCGAN). With `spectral` every layer's weight is divided by
    its largest singular value (Miyato et al., 2018).
    """

    def __init__(self, channels: int, layout: tuple[int, int], width: int, num_classes: int, norm: CriticNorm,
                 spectral: bool):
        super().__init__()
        start, halvings = layout
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Conv2d(channels + num_classes, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        hidden = width
        for _ in range(halvings - 1):
            layers += [nn.Conv2d(hidden, 2 * hidden, 4, 2, 1, bias=norm is CriticNorm.none)]
            if norm is CriticNorm.batch:
                layers.append(nn.BatchNorm2d(2 * hidden))
            elif norm is CriticNorm.layer:
                layers.append(nn.GroupNorm(1, 2 * hidden))
            layers.append(nn.LeakyReLU(0.2, True))
            hidden *= 2
        layers.append(nn.Conv2d(hidden, 1, start, 1, 0))
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)
        if spectral:
            for i, layer in enumerate(self.net):
                if isinstance(layer, nn.Conv2d):
                    self.net[i] = spectral_norm(layer)

    def forward(self, x: Tensor, labels: Optional[Tensor]) -> Tensor:
        if self.num_classes:
            maps = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, maps.expand(-1, -1, *x.shape[2:])], 1)
        return self.net(x).flatten()


class GAN(GenerativeModel):
    """The parts every GAN shares. Subclasses implement critic_loss and generator_loss."""

    main_metric = "fid"
    progress_terms = ("critic_loss", "generator_loss")
    channels_last_on_cpu = True  # measured on CPU: the DCGAN networks train 10-15% faster

    def __init__(self, cfg: GANConfig, data: DataInfo, *, critic_norm: CriticNorm, spectral: bool = False):
        super().__init__(data)
        layout = network_layout(data.height, data.width, self.name)
        self.cfg = cfg
        self.conditional = cfg.conditional
        num_classes = self.require_classes(data) if cfg.conditional else 0
        self.critic_norm = critic_norm
        self.generator = Generator(cfg.latent_dim, data.channels, layout, cfg.generator_width, num_classes)
        self.critic = Critic(data.channels, layout, cfg.critic_width, num_classes, critic_norm, spectral)

    # --- shared pieces of the objectives ------------------------------------------------------------------
    def scale(self, x: Tensor) -> Tensor:
        """uint8 images in [0, levels) -> floats in [-1, 1], the generator's tanh range."""
        return x.float() * (2.0 / (self.data.levels - 1)) - 1.0

    def latents(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.device, generator=generator)

    def fake(self, batch: Batch) -> Tensor:
        """Generated images for the batch's labels (the class mix of the real data)."""
        return self.generator(self.latents(len(batch)), batch.y)

    def noise_std(self, step: int) -> float:
        if self.cfg.instance_noise == 0 or self.cfg.instance_noise_decay_steps == 0:
            return self.cfg.instance_noise
        return self.cfg.instance_noise * max(0.0, 1.0 - step / self.cfg.instance_noise_decay_steps)

    def critic_input(self, images: Tensor, step: int) -> Tensor:
        """Instance noise (Sønderby et al., 2017): blur both distributions so that their supports overlap."""
        std = self.noise_std(step)
        return images + std * torch.randn_like(images) if std > 0 else images

    # --- what subclasses define ---------------------------------------------------------------------------
    def critic_loss(self, batch: Batch, step: int) -> LossOutput:
        raise NotImplementedError

    def generator_loss(self, batch: Batch, step: int) -> LossOutput:
        raise NotImplementedError

    def critic_after_step(self) -> None:
        """Runs after every critic step (WGAN's weight clipping); nothing by default."""

    # --- training -----------------------------------------------------------------------------------------
    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {
            "generator": OptimizerSpec(self.generator.parameters(), self.cfg.optim_generator),
            "critic": OptimizerSpec(self.critic.parameters(), self.cfg.optim_critic),
        }

    def updates(self) -> list[Update]:
        # The critic steps every training step, the generator every critic_steps-th (after that step's critic).
        return [
            Update("critic", self.critic_loss, after_step=self.critic_after_step),
            Update("generator", self.generator_loss, every=self.cfg.critic_steps),
        ]

    def ema_module(self) -> nn.Module:
        return self.generator

    def evaluation_text(self, final: bool) -> str:
        return "critic scores"

    # --- sampling -----------------------------------------------------------------------------------------
    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        images = self.generator(self.latents(n, generator), labels)
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


class DCGAN(GAN, config=DCGANConfig):
    """DCGAN (Radford et al., 2016): a discriminator trained with the logistic loss against the generator."""


    def __init__(self, cfg: DCGANConfig, data: DataInfo):
        norm = CriticNorm.batch if cfg.critic_norm is CriticNorm.auto else cfg.critic_norm
        super().__init__(cfg, data, critic_norm=norm)
        self.loss_kind = cfg.loss

    def critic_loss(self, batch: Batch, step: int) -> LossOutput:
        real_logits = self.critic(self.critic_input(self.scale(batch.x), step), batch.y).float()
        fake_logits = self.critic(self.critic_input(self.fake(batch), step), batch.y).float()
        # -log D(x) - log(1 - D(G(z))), with D = sigmoid(logit); softplus keeps it exact for large logits.
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        return LossOutput(loss, {
            "critic_loss": loss.detach(),
            "d_real": torch.sigmoid(real_logits).mean().detach(),
            "d_fake": torch.sigmoid(fake_logits).mean().detach(),
        })

    def generator_loss(self, batch: Batch, step: int) -> LossOutput:
        logits = self.critic(self.critic_input(self.fake(batch), step), batch.y).float()
        if self.loss_kind is DCGANLoss.nonsaturating:
            loss = F.softplus(-logits).mean()  # -log D(G(z))
        else:
            loss = -F.softplus(logits).mean()  # log(1 - D(G(z)))
        return LossOutput(loss, {"generator_loss": loss.detach(),
                                 "d_fake_at_generator_step": torch.sigmoid(logits).mean().detach()})

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        real = torch.sigmoid(self.critic(self.scale(batch.x), batch.y).float())
        fake = torch.sigmoid(self.critic(self.fake(batch), batch.y).float())
        return {"d_real": real, "d_fake": fake}

    def metric_notes(self) -> list[str]:
        return [
            "d_real / d_fake: mean discriminator probability that validation images / as many generated images "
            "are real (eval-mode networks); they do not measure sample quality, FID does",
        ]


class LSGAN(GAN, config=LSGANConfig):
    """Least-squares GAN (Mao et al., 2017): the critic's raw output is regressed onto targets, no sigmoid."""

    def __init__(self, cfg: LSGANConfig, data: DataInfo):
        norm = CriticNorm.batch if cfg.critic_norm is CriticNorm.auto else cfg.critic_norm  # the paper's DCGAN-style D
        super().__init__(cfg, data, critic_norm=norm)

    def critic_loss(self, batch: Batch, step: int) -> LossOutput:
        real = self.critic(self.critic_input(self.scale(batch.x), step), batch.y).float()
        fake = self.critic(self.critic_input(self.fake(batch), step), batch.y).float()
        loss = 0.5 * (real - self.cfg.real_target).pow(2).mean() + 0.5 * (fake - self.cfg.fake_target).pow(2).mean()
        return LossOutput(loss, {"critic_loss": loss.detach(), "critic_real": real.mean().detach(),
                                 "critic_fake": fake.mean().detach()})

    def generator_loss(self, batch: Batch, step: int) -> LossOutput:
        scores = self.critic(self.critic_input(self.fake(batch), step), batch.y).float()
        loss = 0.5 * (scores - self.cfg.generator_target).pow(2).mean()
        return LossOutput(loss, {"generator_loss": loss.detach()})

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        return {"critic_real": self.critic(self.scale(batch.x), batch.y).float(),
                "critic_fake": self.critic(self.fake(batch), batch.y).float()}

    def metric_notes(self) -> list[str]:
        cfg = self.cfg
        return [
            f"critic_real / critic_fake: the critic's mean raw output (no sigmoid) on validation images / as many "
            f"generated images; its targets are {cfg.real_target:g} for real and {cfg.fake_target:g} for generated "
            f"images, and the generator's is {cfg.generator_target:g}. They do not measure sample quality, FID does",
        ]
