"""Images read from disk a batch at a time (dataset.in_memory=false, data/stored.py): the same batches, weights
and resumes as in memory; decoding continues after an interruption, and one process builds a cache."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_in_process
from synthetic import write_image_folder
from test_resume import RUN, assert_same_weights, final_state

import gentrain.data.images as images_module
from gentrain.composition import load_dataset
from gentrain.data.base import ImageSplit
from gentrain.data.batches import TrainBatches
from gentrain.data.schemas import Binarize, FolderConfig, MNISTConfig
from gentrain.data.stored import DiskImages, spill, take, write_npy
from gentrain.errors import DataError


def test_stored_images_read_what_was_written(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (50, 3, 5, 4), dtype=torch.uint8)
    write_npy(tmp_path / "a.npy", images)
    stored = DiskImages(tmp_path / "a.npy")
    assert stored.shape == images.shape and len(stored) == 50
    index = torch.tensor([7, 8, 9, 0, 49, 3, 3])  # runs, jumps and a repeat
    assert torch.equal(stored[index], images[index]) and torch.equal(stored[10:20], images[10:20])
    assert torch.equal(stored[4], images[4]) and torch.equal(stored.load(), images)
    view = take(take(stored, torch.arange(10, 40)), torch.tensor([5, 1]))  # a view of a view copies nothing
    del stored  # views keep the file open
    assert torch.equal(view[:], images[torch.tensor([15, 11])])
    anonymous = spill(images, tmp_path / "spill")
    assert torch.equal(anonymous.load(), images) and not list((tmp_path / "spill").iterdir())


@pytest.mark.parametrize("damage", ["truncated", "not uint8 images"])
def test_a_damaged_stored_array_is_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "a.npy"
    if damage == "truncated":
        write_npy(path, torch.zeros(10, 1, 4, 4, dtype=torch.uint8))
        path.write_bytes(path.read_bytes()[:-20])
    else:
        np.save(path, np.zeros((10, 16), dtype=np.float32))
    with pytest.raises(DataError, match="a.npy (is shorter than its header|holds float32)"):
        DiskImages(path)


def test_streamed_batches_are_the_in_memory_batches(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (37, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(37)
    stored = ImageSplit(spill(images, tmp_path), labels)
    common = dict(seed=3, use_labels=True, dynamic_binarization=False, rank=1, world_size=2)
    memory, disk = TrainBatches(ImageSplit(images, labels), 8, **common), TrainBatches(stored, 8, **common)
    for _ in range(11):  # across epoch boundaries (4 batches per epoch)
        a, b = next(memory), next(disk)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    memory.load_state_dict({"epoch": 1, "position": 2})  # a jump: the read-ahead starts again
    disk.load_state_dict({"epoch": 1, "position": 2})
    assert torch.equal(next(memory).x, next(disk).x)


def test_mnist_in_memory_or_streamed_holds_the_same_images(shared_data: Path) -> None:
    memory = load_dataset(MNISTConfig(root=str(shared_data), in_memory="true"))
    disk = load_dataset(MNISTConfig(root=str(shared_data), in_memory="false", binarize=Binarize.dynamic))
    assert isinstance(disk.train.images, DiskImages) and isinstance(memory.train.images, torch.Tensor)
    assert torch.equal(disk.train.images[:], memory.train.images)


def test_streaming_trains_the_same_weights_and_resumes_mid_epoch(tmp_path: Path, shared_data: Path) -> None:
    """MLP VAE on dynamically binarized MNIST (the data RNG matters); 40 steps of 32 are mid-epoch."""
    steps = ("trainer.max_steps=40", "trainer.eval_every=20")
    train_in_process(tmp_path / "memory", *RUN, *steps, "dataset.in_memory=true")
    train_in_process(tmp_path / "disk", *RUN, *steps, "dataset.in_memory=false")
    memory, disk = final_state(tmp_path / "memory"), final_state(tmp_path / "disk")
    assert_same_weights(memory["model"], disk["model"])

    train_in_process(tmp_path / "resumed", *RUN, "trainer.max_steps=20", "trainer.eval_every=20",
                     "dataset.in_memory=false")
    train_in_process(tmp_path / "resumed", *RUN, *steps, "dataset.in_memory=false", "trainer.resume=auto")
    resumed = final_state(tmp_path / "resumed")
    assert resumed["step"] == 40 and resumed["batches"] == {"epoch": 0, "position": 40}  # mid-epoch
    assert_same_weights(disk["model"], resumed["model"])


def test_an_interrupted_decoding_continues_where_it_stopped(tmp_path: Path, monkeypatch, caplog) -> None:
    folder = write_image_folder(tmp_path / "images", count=40)
    monkeypatch.setattr(images_module, "DECODE_CHUNK", 4)  # 10 chunks, decoded by 2 worker processes

    class CtrlCAt20(images_module.Progress):  # Ctrl-C once 20 images are in: the record says 16
        def update(self, n: int = 1) -> None:
            super().update(n)
            if self.n >= 20:
                raise KeyboardInterrupt

    progress = images_module.Progress
    monkeypatch.setattr(images_module, "Progress", CtrlCAt20)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(FolderConfig(path=str(folder), image_size=8))
    assert not [p for p in (folder / ".gentrain_cache").iterdir() if not p.name.startswith(".")]  # not cached yet

    monkeypatch.setattr(images_module, "Progress", progress)
    with caplog.at_level(logging.INFO):
        continued = load_dataset(FolderConfig(path=str(folder), image_size=8, in_memory="true"))
    assert "continuing the interrupted decoding" in caplog.text and "at image 16 of 40" in caplog.text
    fresh = load_dataset(FolderConfig(path=str(write_image_folder(tmp_path / "again", count=40)), image_size=8,
                                      in_memory="true"))
    assert torch.equal(continued.train.images, fresh.train.images)


def test_one_process_builds_a_cache_while_the_others_wait(tmp_path: Path, monkeypatch) -> None:
    folder = write_image_folder(tmp_path / "images", count=12)
    builds = []
    decode = images_module.decode_images

    def counted(*args, **kwargs):  # slow enough that the second loader arrives while the first one decodes
        builds.append(1)
        time.sleep(0.5)
        return decode(*args, **kwargs)

    monkeypatch.setattr(images_module, "decode_images", counted)
    results = [None, None]

    def load(i: int) -> None:  # each thread opens the lock file itself: flock excludes them as it would processes
        results[i] = load_dataset(FolderConfig(path=str(folder), image_size=8, in_memory="true")).test.images

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and torch.equal(results[0], results[1])
