"""Evaluation, done the same way wherever it happens: periodic validation, the final test pass, gentrain-eval
and gentrain-sample.

Eval mode, the EMA weights when the run keeps them, and a fixed seed that leaves the training RNG untouched,
so that evaluating the same weights twice gives the same numbers and a run evaluated or not trains the same.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Iterator, Optional, Protocol

import torch
from torch import Tensor

from gentrain import distributed
from gentrain.config import Precision
from gentrain.data.base import ImageDataset
from gentrain.data.batches import Batch, eval_batches
from gentrain.ema import EMA
from gentrain.models.base import GenerativeModel
from gentrain.progress import duration, track

log = logging.getLogger(__name__)
from gentrain.runtime import autocast


class SampleMetrics(Protocol):
    """Metrics of a model's samples (FID, KID: gentrain/metrics/sample_quality.py)."""

    def evaluate(self, model: GenerativeModel) -> dict[str, float]: ...

    def notes(self) -> list[str]: ...


class Evaluator:
    def __init__(
        self,
        model: GenerativeModel,
        dataset: Optional[ImageDataset],  # None when only sampling
        *,
        batch_size: int,
        precision: Precision,
        device: torch.device,
        seed: int,
        limit: Optional[int] = None,
        ema: Optional[EMA] = None,
        sample_metrics: Optional[SampleMetrics] = None,
        progress: bool = True,
    ):
        self.model = model
        self.dataset = dataset
        self.batch_size = batch_size
        self.precision = precision
        self.device = device
        self.seed = seed
        self.limit = limit
        self.ema = ema
        self.sample_metrics = sample_metrics
        self.progress = progress  # bars on a terminal (progress lines elsewhere, always)
        self.use_labels = model.conditional

    @contextlib.contextmanager
    def eval_mode(self, seed_offset: int = 1) -> Iterator[None]:
        """Eval mode, EMA weights when kept, and a fixed seed that leaves the training RNG untouched.

        Networks compiled for training (trainer.compile) run eagerly here: evaluation and samplers call them on
        shapes of their own (PixelCNN samples on growing crops), which would only cost recompilations."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), torch.compiler.set_stance("force_eager"):
            torch.manual_seed(self.seed + seed_offset)
            ema = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
            self.model.eval()
            try:
                with ema:
                    yield
            finally:
                self.model.train()

    def images(self, split_name: str) -> int:
        """How many images of the split an evaluation covers (the first `limit` when set)."""
        size = len(getattr(self.dataset, split_name))
        return size if self.limit is None else min(size, self.limit)

    def split(self, split_name: str, *, final: bool = False) -> dict[str, float]:
        """Mean metrics over the split; `final` asks the model for its expensive end-of-run bounds.

        With several processes each evaluates its shard and the sums are added up, so the numbers are those of
        the whole split."""
        n = self.images(split_name)
        parallel = distributed.context()
        batches = eval_batches(getattr(self.dataset, split_name), self.batch_size, use_labels=self.use_labels,
                               limit=n, rank=parallel.rank, world_size=parallel.world_size)
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), device=self.device)
        with self.eval_mode():
            total = math.ceil((n // parallel.world_size + 1) / self.batch_size)
            desc = f"{split_name}: {self.model.evaluation_text(final)}"
            started = time.perf_counter()
            for index, batch in enumerate(track(batches, desc, total=total, unit="batch", bar=self.progress)):
                with autocast(self.precision, self.device):
                    values = self.model.evaluate(batch, final=final)
                if final and index == 0:  # say what the end-of-run pass costs before most of it is spent
                    estimate = (time.perf_counter() - started) * total
                    log.info("%s on %s images: about %s (timed on the first batch)", desc, f"{n:,}", duration(estimate))
                for name, value in values.items():
                    total = value.detach().float().sum(0)
                    sums[name] = sums[name] + total if name in sums else total
                count += len(batch)
            for name in sorted(sums):  # the same order on every process
                distributed.all_reduce_sum(sums[name])
            distributed.all_reduce_sum(count)
            return self.model.summarize({name: total / count for name, total in sums.items()})

    def sample_quality(self) -> dict[str, float]:
        """FID / KID of the model's samples when configured (computed by the main process), else nothing."""
        if self.sample_metrics is None or not distributed.context().is_main:
            return {}
        with self.eval_mode():
            return self.sample_metrics.evaluate(self.model)

    def grids(self, batch: Batch) -> dict[str, Tensor]:
        """The model's image grids for a fixed batch, with fixed noise so that steps compare."""
        with self.eval_mode(seed_offset=2):
            generator = torch.Generator(device=self.device).manual_seed(self.seed + 2)
            return self.model.visualize(batch, generator)

    def notes(self) -> list[str]:
        return self.model.metric_notes() + (self.sample_metrics.notes() if self.sample_metrics is not None else [])
