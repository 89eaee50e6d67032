"""One training step of any model: each of the updates it declares (models/base.py: Update), run the same way.

For each update: its loss (through DistributedDataParallel when there are several processes, under autocast),
backward through the gradient scaler, the global gradient norm (clipped to trainer.grad_clip), the parameters
of the other optimizers frozen meanwhile, and the non-finite policy: a step whose loss or gradient is not finite
is skipped and counted, and too many in a row (or any, with nonfinite=halt) stop the run. The logged terms are
kept on the device and averaged only when the trainer logs (`take_means`), so a step costs one small device sync
(the finiteness check) and no per-term Python work.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from gentrain import distributed
from gentrain.config import NonFinitePolicy, Precision
from gentrain.data.batches import Batch
from gentrain.errors import NonFiniteError
from gentrain.models.base import GenerativeModel, LossOutput, Update
from gentrain.runtime import autocast

log = logging.getLogger(__name__)


class _LossRunner(nn.Module):
    """Computes an update's loss inside forward(), so that DistributedDataParallel sees one forward per backward
    (models compute their losses in methods of their own, which DDP would not see)."""

    def __init__(self, model: GenerativeModel, updates: list[Update]):
        super().__init__()
        self.model = model
        self.updates = updates

    def forward(self, index: int, x: Tensor, y: Optional[Tensor], other: Optional[Tensor],
                step: int) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.updates[index].loss(Batch(x, y, other), step)
        return out.loss, out.logs


class Updater:
    """Runs a model's updates for one training step (see the module docstring)."""

    def __init__(self, model: GenerativeModel, optimizers: dict[str, Optimizer], *, device: torch.device,
                 precision: Precision = Precision.fp32, grad_clip: Optional[float] = None,
                 nonfinite: NonFinitePolicy = NonFinitePolicy.skip, max_nonfinite: int = 10):
        self.model, self.optimizers, self.device = model, optimizers, device
        self.precision, self.grad_clip = precision, grad_clip
        self.nonfinite, self.max_nonfinite = nonfinite, max_nonfinite
        self.updates: list[Update] = model.updates()
        unknown = [u.optimizer for u in self.updates if u.optimizer not in optimizers]
        if unknown:
            raise ValueError(f"updates use unknown optimizers {unknown}")
        self.params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision is Precision.fp16)
        self.ddp: Optional[DistributedDataParallel] = None
        if distributed.context().enabled:
            # With several optimizers each update leaves the other networks without gradients.
            self.ddp = DistributedDataParallel(
                _LossRunner(model, self.updates), device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=len(optimizers) > 1,
            )
        self.nonfinite_in_a_row = 0
        self.skipped = 0  # non-finite steps skipped so far (part of the run's state)
        self._window: dict[tuple[str, ...], list[tuple[Tensor, ...]]] = {}  # logged names -> their values per step

    def step(self, batch: Batch, step: int) -> None:
        for index, update in enumerate(self.updates):
            if step % update.every == 0:
                self._run(index, update, batch, step)

    def _run(self, index: int, update: Update, batch: Batch, step: int) -> None:
        optimizer = self.optimizers[update.optimizer]
        with self._only_trainable(update.optimizer), autocast(self.precision, self.device):
            if self.ddp is None:
                out = update.loss(batch, step)
            else:  # through DDP, which averages the gradients of all processes during backward
                out = LossOutput(*self.ddp(index, batch.x, batch.y, batch.other, step))
        self.scaler.scale(out.loss).backward()
        self.scaler.unscale_(optimizer)
        grad_norm = self._grad_norm(self.params[update.optimizer])
        if self._finite(out, grad_norm, update, step):
            self.scaler.step(optimizer)
            if update.after_step is not None:
                update.after_step()
            # Kept as they are: stacking and averaging wait for the logging step (take_means).
            self._window.setdefault((*out.logs, f"grad_norm/{update.optimizer}"), []).append(
                (*out.logs.values(), grad_norm))
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def _grad_norm(self, params: list[nn.Parameter]) -> Tensor:
        """Global L2 norm of the gradients (clipped to grad_clip when set); grads are untouched otherwise."""
        if self.grad_clip:
            return torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _only_trainable(self, optimizer: str) -> contextlib.AbstractContextManager:
        return self._frozen_others(optimizer) if len(self.params) > 1 else contextlib.nullcontext()

    @contextlib.contextmanager
    def _frozen_others(self, optimizer: str) -> Iterator[None]:
        """Freeze the parameters of the other optimizers, so an update computes no gradients it throws away."""
        own = {id(p) for p in self.params[optimizer]}
        frozen = [p for name, ps in self.params.items() if name != optimizer for p in ps if id(p) not in own]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _finite(self, out: LossOutput, grad_norm: Tensor, update: Update, step: int) -> bool:
        """Loss and gradient norm checked with one reduction (one device sync) before the optimizer steps. With
        fp16 the scaler itself skips steps whose gradients overflow, so only the loss is checked."""
        total = out.loss.detach().float().reshape(())
        if not self.scaler.is_enabled():
            total = total + grad_norm.detach().float().reshape(())  # finite iff both are
        finite = bool(torch.isfinite(total))
        if not distributed.any_process([not finite], self.device)[0]:  # every process steps, or none
            self.nonfinite_in_a_row = 0
            return True
        self.nonfinite_in_a_row += 1
        self.skipped += 1
        bad_terms = [name for name, value in out.logs.items() if not bool(torch.isfinite(value).all())]
        what = "loss" if not bool(torch.isfinite(out.loss)) else "gradient"
        message = (f"non-finite {what} at step {step} in the '{update.optimizer}' update"
                   f" (non-finite terms: {', '.join(bad_terms) or 'none of the logged terms'})")
        if self.nonfinite is NonFinitePolicy.halt or self.nonfinite_in_a_row >= self.max_nonfinite:
            reason = "trainer.nonfinite=halt" if self.nonfinite is NonFinitePolicy.halt else (
                f"{self.nonfinite_in_a_row} in a row (trainer.max_nonfinite={self.max_nonfinite})")
            raise NonFiniteError(f"{message}; stopping: {reason}")
        log.warning("%s; step skipped (%d in a row, %d in total)", message, self.nonfinite_in_a_row, self.skipped)
        return False

    def take_means(self) -> dict[str, float]:
        """Mean of every logged term over the steps since the last call (one device sync), and a new window."""
        means: dict[str, float] = {}
        for names, steps in self._window.items():
            values = torch.stack([torch.stack([v.detach().float().reshape(()) for v in step]) for step in steps])
            means.update(zip(names, values.mean(0).tolist()))
        self._window = {}
        return means

    def peek_means(self) -> dict[str, float]:
        """The same means, keeping the window (for the progress bar's first numbers)."""
        window = self._window
        means = self.take_means()
        self._window = window
        return means
