"""Exponential moving average of a module's parameters, swapped in for evaluation and sampling."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    """Keeps shadow = decay * shadow + (1 - decay) * param after every training step.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so short runs are not
    dominated by the random initial weights. Buffers (e.g. batch-norm statistics) are not averaged.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the body with the averaged weights in place of the live ones."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, live)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.shadow, list(state["shadow"]))
        self.num_updates = int(state["num_updates"])
