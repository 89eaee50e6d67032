"""Mini-batches sliced from tensors that already sit on the training device: no DataLoader workers and no
host-to-device copy per step for datasets that fit in memory. Images stored on disk (dataset.in_memory,
data/stored.py) take the same batches in the same order, read ahead by a background thread into pinned memory
and copied to the device without blocking."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from gentrain.data.base import ImageSplit
from gentrain.data.stored import DiskImages

READ_AHEAD = 3  # batches a streaming run reads ahead of the step that needs them


@dataclass
class Batch:
    x: Tensor  # uint8 (B, C, H, W), integers in [0, levels)
    y: Optional[Tensor]  # int64 class ids (B,), or None when the model is not given labels
    other: Optional[Tensor] = None  # unpaired data: as many images of domain B, drawn independently of x

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.other))


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
        rank: int = 0, world_size: int = 1, device: Optional[torch.device] = None,
    ):
        self.images = split.images
        self.device = device if device is not None else split.images.device
        self.other = split.other
        self.labels = split.labels if use_labels else None
        self.batch_size = batch_size
        self.shard = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.seed = seed
        self.dynamic_binarization = dynamic_binarization
        self.steps_per_epoch = len(split) // batch_size
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._started = False  # the current epoch's orders are drawn
        self._order: Optional[Tensor] = None
        self._orders: dict[int, Tensor] = {}  # streaming: the orders of the epochs being read (at most two)
        self._ahead: deque[tuple[int, Future]] = deque()  # streaming: (global batch number, its read)
        self._reader = (ThreadPoolExecutor(1, "gentrain-reader") if isinstance(self.images, DiskImages)
                        else None)

    def _epoch_order(self, epoch: int, stream: int = 0) -> Tensor:
        """A permutation of the images (stream 0) or of domain B's (stream 1) for `epoch`."""
        count = len(self.images) if stream == 0 else len(self.other)
        words = [self.seed, epoch] if stream == 0 else [self.seed, epoch, stream]
        seed = int(np.random.SeedSequence(words).generate_state(1)[0])
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        return order.to(self.images.device)

    def _read(self, number: int) -> Future:
        """Start reading global batch `number` (epoch * steps_per_epoch + position) in the background."""
        epoch, position = divmod(number, self.steps_per_epoch)
        if epoch not in self._orders:  # keep the current epoch's order and the next's
            self._orders = ({e: o for e, o in self._orders.items() if e >= self.epoch}
                            | {epoch: self._epoch_order(epoch)})
        start = position * self.batch_size
        index = self._orders[epoch][start : start + self.batch_size][self.shard]
        pin = self.device.type == "cuda"
        return self._reader.submit(lambda: (index, self.images.read(index, pin=pin)))

    def _next_stored(self) -> tuple[Tensor, Tensor]:
        """The current batch's indices and images, from the read-ahead queue (restarted after a jump)."""
        number = self.epoch * self.steps_per_epoch + self.position
        if not self._ahead or self._ahead[0][0] != number:
            self._ahead.clear()
            self._ahead.extend((n, self._read(n)) for n in range(number, number + READ_AHEAD))
        _, future = self._ahead.popleft()
        self._ahead.append((number + READ_AHEAD, self._read(number + READ_AHEAD)))
        index, x = future.result()
        return index, x.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if not self._started:
            self._order = self._epoch_order(self.epoch) if self._reader is None else None
            self._other_order = None if self.other is None else self._epoch_order(self.epoch, stream=1)
            self._started = True
        start = self.position * self.batch_size
        if self._reader is None:
            index = self._order[start : start + self.batch_size][self.shard]
            x = self.images[index]
        else:
            index, x = self._next_stored()
        other = None
        if self.other is not None:  # B's own order, wrapping around when B has fewer images than A
            positions = torch.arange(start, start + self.batch_size,
                                     device=self._other_order.device)[self.shard]
            other = self.other[self._other_order[positions % len(self.other)]].to(self.device)
        if self.dynamic_binarization:  # a fresh Bernoulli draw per batch, from the device's global RNG
            x = (torch.rand(x.shape, device=x.device) * 255.0 < x).to(torch.uint8)
        y = None if self.labels is None else self.labels[index]
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.epoch, self.position, self._started = self.epoch + 1, 0, False
        return Batch(x, y, other)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._started = int(state["epoch"]), int(state["position"]), False


def eval_batches(
    split: ImageSplit, batch_size: int, *, use_labels: bool, limit: Optional[int] = None, rank: int = 0,
    world_size: int = 1, device: Optional[torch.device] = None, start: int = 0,
) -> Iterator[Batch]:
    """The split in order from image `start` up to `limit` (default: its end), in batches of `batch_size` (the
    last one may be smaller), on `device` (default: where the split is). With several processes each gets a
    contiguous 1/world_size of those images."""
    n = len(split) if limit is None else min(limit, len(split))
    count = max(0, n - start)
    first, last = start + count * rank // world_size, start + count * (rank + 1) // world_size
    for start in range(first, last, batch_size):
        end = min(start + batch_size, last)
        y = split.labels[start:end] if use_labels and split.labels is not None else None
        other = None
        if split.other is not None:  # evaluation pairs by position (wrapping): its metrics are per domain
            other = split.other[torch.arange(start, end, device=split.other.device) % len(split.other)]
        batch = Batch(split.images[start:end], y, other)
        yield batch if device is None else batch.to(device)
