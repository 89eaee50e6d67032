"""Mini-batches sliced from tensors that already sit on the training device: no DataLoader workers and no
host-to-device copy per step for datasets that fit in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from gentrain.data.base import ImageSplit


@dataclass
class Batch:
    x: Tensor  # uint8 (B, C, H, W), integers in [0, levels)
    y: Optional[Tensor]  # int64 class ids (B,), or None when the model is not given labels
    other: Optional[Tensor] = None  # unpaired data: as many images of domain B, drawn independently of x

    def __len__(self) -> int:
        return self.x.shape[0]


class TrainBatches:
    """Endless shuffled batches of the training split; the last partial batch of each epoch is dropped.

    The order of epoch e depends only on (seed, e), and the position inside the epoch is part of the state,
    so a resumed run sees exactly the batches the uninterrupted run would have seen. With several processes
    each takes its own contiguous shard of every global batch of `batch_size` images; the state counts global
    batches, so a run can resume with another number of processes. With unpaired data (split.other) domain B
    has its own order per epoch, from another seed, so no image of A is ever paired with one of B by position.
    """

    def __init__(
        self, split: ImageSplit, batch_size: int, *, seed: int, use_labels: bool, dynamic_binarization: bool,
        rank: int = 0, world_size: int = 1,
    ):
        self.images = split.images
        self.other = split.other
        self.labels = split.labels if use_labels else None
        self.batch_size = batch_size
        self.shard = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.seed = seed
        self.dynamic_binarization = dynamic_binarization
        self.steps_per_epoch = len(split) // batch_size
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._order: Optional[Tensor] = None

    def _epoch_order(self, stream: int = 0) -> Tensor:
        """A permutation of the images (stream 0) or of domain B's (stream 1) for the current epoch."""
        count = len(self.images) if stream == 0 else len(self.other)
        words = [self.seed, self.epoch] if stream == 0 else [self.seed, self.epoch, stream]
        seed = int(np.random.SeedSequence(words).generate_state(1)[0])
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        return order.to(self.images.device)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._order is None:
            self._order = self._epoch_order()
            self._other_order = None if self.other is None else self._epoch_order(stream=1)
        start = self.position * self.batch_size
        index = self._order[start : start + self.batch_size][self.shard]
        x = self.images[index]
        other = None
        if self.other is not None:  # B's own order, wrapping around when B has fewer images than A
            positions = torch.arange(start, start + self.batch_size, device=self._other_order.device)[self.shard]
            other = self.other[self._other_order[positions % len(self.other)]]
        if self.dynamic_binarization:  # a fresh Bernoulli draw per batch, from the device's global RNG
            x = (torch.rand(x.shape, device=x.device) * 255.0 < x).to(torch.uint8)
        y = None if self.labels is None else self.labels[index]
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return Batch(x, y, other)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


def eval_batches(
    split: ImageSplit, batch_size: int, *, use_labels: bool, limit: Optional[int] = None, rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """The split in order, in batches of `batch_size` (the last one may be smaller). With several processes
    each gets a contiguous 1/world_size of the (first `limit` images of the) split."""
    n = len(split) if limit is None else min(limit, len(split))
    first, last = n * rank // world_size, n * (rank + 1) // world_size
    for start in range(first, last, batch_size):
        end = min(start + batch_size, last)
        y = split.labels[start:end] if use_labels and split.labels is not None else None
        other = None
        if split.other is not None:  # evaluation pairs by position (wrapping): its metrics are per domain
            other = split.other[torch.arange(start, end, device=split.other.device) % len(split.other)]
        yield Batch(split.images[start:end], y, other)
