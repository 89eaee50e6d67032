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
        final_images: Optional[int] = None,  # test images the end-of-run bounds cover (None: all)
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
        self.final_images = final_images
        self.use_labels = model.conditional
        self.covered: dict[str, dict[str, int]] = {}  # split -> metric -> images its mean covers

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
        """Mean metrics over the split; `final` asks the model for its expensive end-of-run bounds, on the
        first `self.final_images` images (None: all); the rest of the split gets the ordinary metrics, and the
        notes say which images each mean covers (`covered`). The two parts are two passes with progress of their
        own, so that each one's rate and ETA are right. With several processes each evaluates its shard of each
        part and the sums are added up, so the numbers are those of the whole split."""
        n = self.images(split_name)
        bounded = 0 if not final else n if self.final_images is None else min(n, self.final_images)
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        squares: dict[str, Tensor] = {}  # of the model's standard_errors values
        # Every shard is evaluated with the buffers the checkpoints hold, rank 0's, so that a restarted run (and
        # gentrain-eval) gets the same numbers.
        distributed.broadcast_buffers(self.model)
        with self.eval_mode():
            for start, stop, expensive in ((0, bounded, True), (bounded, n, False)):
                if stop > start:
                    self._accumulate(split_name, start, stop, expensive, sums, counts, squares)
            counted = {name: torch.tensor(float(counts[name]), device=self.device) for name in sums}
            for name in sorted(sums):  # the same order on every process
                distributed.all_reduce_sum(sums[name])
                distributed.all_reduce_sum(counted[name])
                if name in squares:
                    distributed.all_reduce_sum(squares[name])
            self.covered[split_name] = {name: int(count) for name, count in counted.items()}
            metrics = self.model.summarize({name: sums[name] / counted[name] for name in sums})
            for name, square in squares.items():
                count, mean = counted[name], sums[name] / counted[name]
                variance = (square / count - mean ** 2).clamp(min=0) * count / (count - 1).clamp(min=1)
                metrics[f"{name}_stderr"] = float((variance / count).sqrt())
            return metrics

    def _accumulate(self, split_name: str, start: int, stop: int, final: bool, sums: dict[str, Tensor],
                    counts: dict[str, int], squares: dict[str, Tensor]) -> None:
        """Add the per-image values of images [start, stop) of the split (this process's shard) to the sums."""
        parallel = distributed.context()
        batches = eval_batches(getattr(self.dataset, split_name), self.batch_size, use_labels=self.use_labels,
                               start=start, limit=stop, rank=parallel.rank, world_size=parallel.world_size,
                               device=self.device)
        shard = (stop - start) * (parallel.rank + 1) // parallel.world_size \
            - (stop - start) * parallel.rank // parallel.world_size
        total = math.ceil(shard / self.batch_size)
        desc = f"{split_name}: {self.model.evaluation_text(final)}"
        started = time.perf_counter()
        for index, batch in enumerate(track(batches, desc, total=total, unit="batch", bar=self.progress)):
            with autocast(self.precision, self.device):
                values = self.model.evaluate(batch, final=final)
            if final and index == 0:  # what the end-of-run pass costs, said before most of it is spent
                first = "the first " if stop < self.images(split_name) else ""
                log.info("%s on %s%s images: about %s (timed on the first batch)", desc, first,
                         f"{stop - start:,}", duration((time.perf_counter() - started) * total))
            for name, value in values.items():
                sums[name] = sums.get(name, 0) + value.detach().float().sum(0)
                counts[name] = counts.get(name, 0) + len(batch)
                if name in self.model.standard_errors:
                    squares[name] = squares.get(name, 0) + value.detach().float().pow(2).sum(0)

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
        notes = self.model.metric_notes() + (self.sample_metrics.notes() if self.sample_metrics is not None else [])
        for split, covered in self.covered.items():
            most = max(covered.values(), default=0)
            fewer = sorted(name for name, count in covered.items() if count < most)
            if fewer:
                notes.append(f"{split}: {', '.join(fewer)} cover the first {min(covered[n] for n in fewer):,} of "
                             f"{most:,} images (trainer.final_images; gentrain-eval computes them on all)")
        return notes
