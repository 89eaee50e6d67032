"""Images read from disk a batch at a time (dataset.in_memory=false, data/stored.py): the same batches, weights
and resumes as in memory; decoding continues after an interruption, and one process builds a cache. Writing
them (data/npyfile.py): a full disk is one line and exit status 2, never SIGBUS, a half-written cache or a
file left behind."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

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
from gentrain.data.cache import cache_dir_for
from gentrain.data.schemas import Binarize, FolderConfig, MNISTConfig
from gentrain.data.npyfile import spill
from gentrain.data.stored import DiskImages, take
from gentrain.errors import DataError, exit_statuses


def test_stored_images_read_what_was_written(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (50, 3, 5, 4), dtype=torch.uint8)
    np.save(tmp_path / "a.npy", images.numpy())
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
        np.save(path, np.zeros((10, 1, 4, 4), dtype=np.uint8))
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


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """No file of this process may grow past `size` bytes: the kernel refuses the write (EFBIG) as a
    full disk refuses it (ENOSPC), without root or a real full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the fatal signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def complete_caches(folder: Path) -> list[Path]:
    return [p for p in (folder / ".gentrain_cache").iterdir() if not p.name.startswith(".")]


def decoded_afresh(folder: Path, count: int):
    """The same images as write_image_folder(..., count) always writes, decoded in memory."""
    return load_dataset(FolderConfig(path=str(write_image_folder(folder, count=count)), image_size=8,
                                     in_memory="true"))


def open_descriptors() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors (Linux /proc)")
@pytest.mark.parametrize("options", [{"in_memory": "false"}, {"image_size": 32, "split_seed": 977}],
                         ids=["streamed", "resized"])
def test_a_full_disk_while_mnist_is_written_is_one_line(shared_data: Path, capsys, options) -> None:
    """Streamed MNIST is spilled to a file without a name, resized MNIST cached (a split_seed of its
    own: never found in the cache), both in the cache folder of the data."""
    place = cache_dir_for(shared_data)
    before, descriptors = os.listdir(place) if place.is_dir() else [], open_descriptors()
    with pytest.raises(SystemExit) as stopped, exit_statuses("gentrain"), file_size_limit(1 << 20):
        load_dataset(MNISTConfig(root=str(shared_data), **options))
    assert stopped.value.code == 2 and "File too large" in one_error_line(capsys)
    new = set(os.listdir(place)) - set(before)
    assert all(name.endswith(".lock") for name in new), new  # a cache's lock file stays, as ever
    assert open_descriptors() == descriptors  # not even an open file without a name is left


def test_a_full_disk_while_decoding_is_one_line_and_never_a_cache(tmp_path, monkeypatch, capsys,
                                                                  caplog) -> None:
    folder = write_image_folder(tmp_path / "images", count=40)
    monkeypatch.setattr(images_module, "DECODE_CHUNK", 4)

    def mapped(*args, **kwargs):
        raise AssertionError("written through a memory map: a full disk would be SIGBUS")

    monkeypatch.setattr(np, "memmap", mapped)
    monkeypatch.setattr(np.lib.format, "open_memmap", mapped)
    write, writes = os.pwrite, []

    def fills_up(fd: int, data, offset: int) -> int:  # the header and two chunks of images fit
        writes.append(offset)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", fills_up)
    with pytest.raises(SystemExit) as stopped, exit_statuses("gentrain"):
        load_dataset(FolderConfig(path=str(folder), image_size=8))
    assert stopped.value.code == 2 and "images.npy: No space left on device" in one_error_line(capsys)
    assert not complete_caches(folder)

    monkeypatch.setattr(os, "pwrite", write)  # space again: the decoding continues where it stopped
    with caplog.at_level(logging.INFO):
        continued = load_dataset(FolderConfig(path=str(folder), image_size=8, in_memory="true"))
    assert "continuing the interrupted decoding" in caplog.text and "at image 8 of 40" in caplog.text
    assert torch.equal(continued.train.images, decoded_afresh(tmp_path / "again", 40).train.images)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs: a disk that really fills up (mounting it needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command to make a small disk that fills up")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_decoding_onto_a_disk_that_fills_up_is_one_line_not_sigbus(tiny_disk: Path) -> None:
    folder = write_image_folder(tiny_disk / "images", count=40)  # decoded at 64 px: 490 kB
    load = ("import sys\n"
            "from gentrain.errors import exit_statuses\n"
            "from gentrain.composition import load_dataset\n"
            "from gentrain.data.schemas import FolderConfig\n"
            "with exit_statuses('gentrain'):\n"
            "    load_dataset(FolderConfig(path=sys.argv[1], image_size=64))")
    done = subprocess.run([sys.executable, "-c", load, str(folder)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    assert done.stderr.strip().splitlines()[-1].endswith("No space left on device")
    assert not complete_caches(folder)


def test_data_that_cannot_be_cached_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    """A read-only data folder and no user cache either: the decoded arrays live in files without a
    name from the start, so that a run killed with `kill -9` leaves nothing either."""
    folder = write_image_folder(tmp_path / "images", count=12)
    blocker = tmp_path / "a_file"  # nothing can be created under a regular file, even by root
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    seen = []

    class Watched(images_module.Progress):  # what $TMPDIR holds while the images are decoded
        def update(self, n: int = 1) -> None:
            seen.append(os.listdir(temporary))
            super().update(n)

    monkeypatch.setattr(images_module, "Progress", Watched)
    folder.chmod(0o555)
    try:
        streamed = load_dataset(FolderConfig(path=str(folder), image_size=8, in_memory="false"))
    finally:
        folder.chmod(0o755)
    assert isinstance(streamed.train.images, DiskImages)
    assert seen and not any(seen) and not os.listdir(temporary)
    assert torch.equal(streamed.train.images[:], decoded_afresh(tmp_path / "again", 12).train.images)
