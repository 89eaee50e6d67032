"""What every exact-likelihood model shares: one update that minimises bits/dim, and per-image evaluation.

A subclass implements `nll_nats(batch)`, the negative log-likelihood of the discrete images (or an upper
bound on it, which its metric_notes() must say) in nats per image; bits/dim = nats / (D ln 2).
"""

from __future__ import annotations

from torch import Tensor

from gentrain.data.batches import Batch
from gentrain.metrics import bits_per_dim
from gentrain.models.base import GenerativeModel, LossOutput


class LikelihoodModel(GenerativeModel):
    """Trains by maximum likelihood; logs and evaluates `bits_per_dim` and `nll_nats`. Needs `self.cfg.optim`."""

    def nll_nats(self, batch: Batch) -> Tensor:
        """-log p(x) in nats per image, (B,)."""
        raise NotImplementedError

    progress_terms = ("bits_per_dim",)

    def loss(self, batch: Batch, step: int) -> LossOutput:
        nll = self.nll_nats(batch)
        bpd = bits_per_dim(nll, self.data.num_dims).mean()
        return LossOutput(bpd, {"bits_per_dim": bpd.detach(), "nll_nats": nll.mean().detach()})  # the loss is bpd

    def evaluation_text(self, final: bool) -> str:
        return "bits/dim"

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        nll = self.nll_nats(batch)
        return {"bits_per_dim": bits_per_dim(nll, self.data.num_dims), "nll_nats": nll}
