"""Wasserstein GANs: the critic estimates the Wasserstein-1 distance, under a Lipschitz constraint chosen by
`model.lipschitz`:

- `clip`: weight clipping to [-c, c] after every critic step, RMSprop (Arjovsky et al., 2017);
- `gp`: a penalty lambda * (||grad f(x_hat)|| - 1)^2 on random interpolates of real and generated images, Adam
  with betas (0, 0.9), no batch norm in the critic (Gulrajani et al., 2017);
- `spectral`: every critic layer divided by its largest singular value (Miyato et al., 2018).

Each constraint comes with its paper's n_critic and optimizer (PAPER_SETTINGS). configs/model/wgan.yaml ties
those defaults to `model.lipschitz` through the `wgan_paper` resolver, so `model.lipschitz=clip` alone gives
the WGAN paper's settings; any of them can still be overridden. The networks are DCGAN's (gan.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.models.base import LossOutput
from gentrain.models.gan import GAN
from gentrain.models.schemas.gan import PAPER_SETTINGS, CriticNorm, Lipschitz, WGANConfig


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, labels: Optional[Tensor]) -> Tensor:
    """Mean over the batch of (||grad_x f(x_hat)||_2 - 1)^2 at x_hat = eps * real + (1 - eps) * fake, eps ~ U[0, 1].

    Computed in fp32 with autocast off: the penalty differentiates the critic's gradient, and bf16 gradients
    of that norm are too coarse. create_graph keeps it differentiable for the critic's own update; compiled
    graphs (trainer.compile) have no double backward, so this critic call runs eagerly.
    """
    with torch.autocast(real.device.type, enabled=False), torch.compiler.set_stance("force_eager"):
        real, fake = real.float(), fake.detach().float()
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        mixed = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
        scores = critic(mixed, labels).float()
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


class WGAN(GAN, config=WGANConfig):
    """Wasserstein GAN: critic loss E[f(G(z))] - E[f(x)] (+ penalty), generator loss -E[f(G(z))]."""


    def __init__(self, cfg: WGANConfig, data: DataInfo):
        norm = PAPER_SETTINGS[cfg.lipschitz].critic_norm if cfg.critic_norm is CriticNorm.auto else cfg.critic_norm
        super().__init__(cfg, data, critic_norm=norm, spectral=cfg.lipschitz is Lipschitz.spectral)
        self.lipschitz = cfg.lipschitz

    def critic_loss(self, batch: Batch, step: int) -> LossOutput:
        real = self.critic_input(self.scale(batch.x), step)
        fake = self.critic_input(self.fake(batch), step)
        real_score = self.critic(real, batch.y).float().mean()
        fake_score = self.critic(fake, batch.y).float().mean()
        wasserstein = real_score - fake_score
        loss = -wasserstein
        logs = {"wasserstein_estimate": wasserstein.detach(), "critic_real": real_score.detach(),
                "critic_fake": fake_score.detach()}
        if self.lipschitz is Lipschitz.gp:
            penalty = gradient_penalty(self.critic, real, fake, batch.y)
            loss = loss + self.cfg.gp_weight * penalty
            logs["gradient_penalty"] = penalty.detach()
        logs["critic_loss"] = loss.detach()
        return LossOutput(loss, logs)

    def generator_loss(self, batch: Batch, step: int) -> LossOutput:
        loss = -self.critic(self.critic_input(self.fake(batch), step), batch.y).float().mean()
        return LossOutput(loss, {"generator_loss": loss.detach()})

    @torch.no_grad()
    def critic_after_step(self) -> None:
        if self.lipschitz is Lipschitz.clip:
            # Every critic parameter, batch-norm scales included, as in the WGAN reference code.
            for param in self.critic.parameters():
                param.clamp_(-self.cfg.clip_value, self.cfg.clip_value)

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        real = self.critic(self.scale(batch.x), batch.y).float()
        fake = self.critic(self.fake(batch), batch.y).float()
        return {"critic_real": real, "critic_fake": fake, "wasserstein_estimate": real - fake}

    def metric_notes(self) -> list[str]:
        return [
            f"wasserstein_estimate: mean critic score of validation images minus that of as many generated images "
            f"(lipschitz={self.lipschitz.value}); the critic's estimate of W1 up to its Lipschitz constant, "
            f"comparable only within a run",
        ]
