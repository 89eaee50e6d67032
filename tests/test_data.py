"""Datasets: the shared offline copies, small synthetic files in the official formats, downloads and bad input."""

from __future__ import annotations

import errno
import gzip
import logging
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_celeba, write_cifar10, write_image_folder, write_mnist
from test_streaming import file_size_limit

import gentrain.data.images as images_module
from gentrain.composition import load_dataset
from gentrain.data.schemas import Binarize
from gentrain.data.batches import TrainBatches, eval_batches
from gentrain.data.celeba import CelebAConfig, CelebALabels
from gentrain.data.cifar10 import CIFAR10Config
from gentrain.data.download import download, extract_tar, file_digest
from gentrain.data.folder import FolderConfig
from gentrain.data.mnist import FILES as MNIST_FILES
from gentrain.data.mnist import MNISTConfig
from gentrain.errors import DataError


def assert_uint8_splits(dataset, shape, sizes):
    for split, size in zip((dataset.train, dataset.val, dataset.test), sizes):
        assert split.images.dtype == torch.uint8
        assert tuple(split.images.shape) == (size, *shape)
        assert split.labels is not None and len(split.labels) == size


# --- MNIST ----------------------------------------------------------------------------------------


def test_mnist_loads_from_the_shared_copy(shared_data: Path) -> None:
    dataset = load_dataset(MNISTConfig(root=str(shared_data)))
    assert_uint8_splits(dataset, (1, 28, 28), (54_000, 6_000, 10_000))
    assert dataset.num_classes == 10 and dataset.levels == 256
    assert set(dataset.test.labels.unique().tolist()) == set(range(10))
    assert dataset.train.images.max() == 255 and dataset.train.images.float().mean() > 20  # real digits, not blank
    again = load_dataset(MNISTConfig(root=str(shared_data)))
    assert torch.equal(again.val.images, dataset.val.images)  # the hold-out is seeded
    other = load_dataset(MNISTConfig(root=str(shared_data), split_seed=1))
    assert not torch.equal(other.val.labels, dataset.val.labels)


def test_mnist_binarization(shared_data: Path) -> None:
    static = load_dataset(MNISTConfig(root=str(shared_data), binarize=Binarize.static))
    assert static.levels == 2 and not static.dynamic_binarization
    assert set(static.train.images[:100].unique().tolist()) == {0, 1}
    dynamic = load_dataset(MNISTConfig(root=str(shared_data), binarize=Binarize.dynamic))
    assert dynamic.dynamic_binarization and dynamic.train.images.max() == 255  # re-drawn per batch
    assert torch.equal(dynamic.test.images, static.test.images)  # evaluation uses one fixed draw
    batches = TrainBatches(dynamic.train, 64, seed=0, use_labels=False, dynamic_binarization=True)
    first = next(batches).x
    assert set(first.unique().tolist()) <= {0, 1}


def test_mnist_resize_is_exact_and_cached(tmp_path: Path, monkeypatch) -> None:
    """Resized a chunk at a time into uint8 (the same pixels as one whole-array resize), and cached: the second
    load at that size resizes nothing."""
    write_mnist(tmp_path, n_train=30, n_test=10)
    config = MNISTConfig(root=str(tmp_path), image_size=32, verify=False, val_fraction=0.2)
    dataset = load_dataset(config)
    assert tuple(dataset.train.images.shape[1:]) == (1, 32, 32) and dataset.train.images.dtype == torch.uint8
    raw = load_dataset(MNISTConfig(root=str(tmp_path), verify=False, val_fraction=0.2)).test.images
    whole = torch.nn.functional.interpolate(raw.float(), size=(32, 32), mode="bilinear", antialias=True)
    assert torch.equal(dataset.test.images, whole.round().clamp(0, 255).to(torch.uint8))
    chunked = images_module.resize_images(raw, 32, chunk=3)
    assert torch.equal(chunked, dataset.test.images)

    def no_resizing(*args, **kwargs):
        raise AssertionError("resized again instead of using the cache")

    monkeypatch.setattr(images_module, "resize_images", no_resizing)
    again = load_dataset(config)
    assert torch.equal(again.train.images, dataset.train.images) and torch.equal(again.test.images, dataset.test.images)


def test_mnist_corrupt_file_is_rejected(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path)  # synthetic files cannot match the published md5s
    with pytest.raises(DataError, match="does not match the published md5.*dataset.verify=false"):
        load_dataset(MNISTConfig(root=str(tmp_path)))
    dataset = load_dataset(MNISTConfig(root=str(tmp_path), verify=False, val_fraction=0.25))
    assert_uint8_splits(dataset, (1, 28, 28), (45, 15, 20))
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load_dataset(MNISTConfig(root=str(tmp_path), verify=False))


def test_mnist_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(MNISTConfig(root=str(tmp_path), download=False))
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "dataset.download=false" in message


def test_mnist_downloads_and_verifies(tmp_path: Path, shared_data: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in MNIST_FILES:
        shutil.copy(shared_data / "MNIST" / "raw" / f"{name}.gz", mirror)
    root = tmp_path / "data"
    dataset = load_dataset(MNISTConfig(root=str(root), mirrors=[f"file://{mirror}/"]))
    assert len(dataset.test) == 10_000
    for name, md5 in MNIST_FILES.items():
        assert file_digest(root / "MNIST" / "raw" / f"{name}.gz") == md5


def test_download_rejects_a_corrupted_file_and_leaves_nothing(tmp_path: Path, shared_data: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = (shared_data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:-10] + b"corrupted!")
    target = tmp_path / "out" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match="does not match the published"):
        download([f"file://{mirror}/t10k-labels-idx1-ubyte.gz"], target, MNIST_FILES["t10k-labels-idx1-ubyte"])
    assert list(target.parent.iterdir()) == []  # no partial or corrupt file left behind


def test_download_falls_back_to_the_next_mirror(tmp_path: Path, shared_data: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(shared_data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", mirror)
    target = tmp_path / "out" / "t10k-labels-idx1-ubyte.gz"
    download([f"file://{tmp_path}/nowhere/x.gz", f"file://{mirror}/t10k-labels-idx1-ubyte.gz"], target,
             MNIST_FILES["t10k-labels-idx1-ubyte"])
    assert target.exists()


def test_a_full_disk_while_downloading_stops_at_once_leaving_nothing(tmp_path, shared_data) -> None:
    name = "train-images-idx3-ubyte.gz"  # 9.9 MB
    mirror = f"file://{shared_data}/MNIST/raw/{name}"
    target = tmp_path / "out" / name
    with pytest.raises(OSError) as full, file_size_limit(1 << 20):
        download([mirror, mirror], target, None)  # a second mirror would fill the disk again
    assert full.value.errno == errno.EFBIG and full.value.filename == str(target.parent)
    assert list(target.parent.iterdir()) == []


def test_a_full_disk_while_unpacking_leaves_nothing_half_unpacked(tmp_path: Path) -> None:
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (batches / name).write_bytes(np.random.default_rng(0).bytes(600_000))
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname=batches.name)
    with pytest.raises(OSError, match="File too large"), file_size_limit(500_000):
        extract_tar(archive, archive.parent)
    assert list(archive.parent.iterdir()) == [archive]
    extract_tar(archive, archive.parent)  # room again: unpacked whole
    unpacked = archive.parent / batches.name / "test_batch"
    assert unpacked.read_bytes() == (batches / "test_batch").read_bytes()


def test_offline_download_names_the_files(tmp_path: Path) -> None:
    cfg = MNISTConfig(root=str(tmp_path), mirrors=[f"file://{tmp_path}/no-such-mirror/"])
    with pytest.raises(DataError, match="could not download.*MNIST files not found.*Put them there"):
        load_dataset(cfg)


# --- CIFAR-10 -------------------------------------------------------------------------------------


def test_cifar10_shared_subset_loads_with_a_warning(shared_data: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(CIFAR10Config(root=str(shared_data)))
    assert "partial set" in caplog.text and "data_batch_2" in caplog.text
    assert_uint8_splits(dataset, (3, 32, 32), (3_600, 400, 1_000))
    assert dataset.num_classes == 10


def test_cifar10_synthetic_full_set_checks_md5(tmp_path: Path) -> None:
    write_cifar10(tmp_path, train_batches=5, n=20)
    with pytest.raises(DataError, match="does not match the published md5.*dataset.verify=false"):
        load_dataset(CIFAR10Config(root=str(tmp_path)))
    dataset = load_dataset(CIFAR10Config(root=str(tmp_path), verify=False, val_fraction=0.2))
    assert_uint8_splits(dataset, (3, 32, 32), (80, 20, 20))


def test_cifar10_synthetic_partial_set(tmp_path: Path, caplog) -> None:
    write_cifar10(tmp_path, train_batches=2, n=10)
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(CIFAR10Config(root=str(tmp_path), val_fraction=0.1))
    assert "data_batch_3, data_batch_4, data_batch_5 missing" in caplog.text
    assert len(dataset.train) + len(dataset.val) == 20


def test_cifar10_truncated_batch(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, train_batches=1, n=10)
    data = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data_batch_1.*truncated or corrupt"):
        load_dataset(CIFAR10Config(root=str(tmp_path)))


def test_cifar10_malicious_pickle_is_not_executed(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, train_batches=1, n=10)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Exploit(), "labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(CIFAR10Config(root=str(tmp_path)))
    assert not marker.exists()


def test_cifar10_missing_with_download_disabled(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CIFAR-10 files not found: expected data_batch_1.*test_batch"):
        load_dataset(CIFAR10Config(root=str(tmp_path), download=False))


# --- CelebA and folders ---------------------------------------------------------------------------


def test_celeba_shared_subset_decodes_once_then_uses_the_cache(shared_data: Path, monkeypatch) -> None:
    cfg = CelebAConfig(root=str(shared_data), image_size=32)
    dataset = load_dataset(cfg)
    assert_uint8_splits(dataset, (3, 32, 32), (4_591, 780, 660))
    assert dataset.num_classes is None  # identities are labels, not classes to condition on

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(images_module, "decode_images", no_decoding)
    cached = load_dataset(cfg)
    assert torch.equal(cached.test.images, dataset.test.images)


def test_celeba_synthetic(tmp_path: Path) -> None:
    write_celeba(tmp_path, partitions=(8, 3, 3))
    dataset = load_dataset(CelebAConfig(root=str(tmp_path), image_size=16, crop=None))
    assert_uint8_splits(dataset, (3, 16, 16), (8, 3, 3))
    unlabelled = load_dataset(CelebAConfig(root=str(tmp_path), image_size=16, labels=CelebALabels.none))
    assert unlabelled.train.labels is None


def test_celeba_missing_and_unreadable_images_are_named(tmp_path: Path) -> None:
    folder = write_celeba(tmp_path, partitions=(4, 2, 2))
    (folder / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DataError, match="missing from .*img_align_celeba: 000002.jpg"):
        load_dataset(CelebAConfig(root=str(tmp_path), image_size=16))
    (folder / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="could not be read.*000002.jpg"):
        load_dataset(CelebAConfig(root=str(tmp_path), image_size=16))


def test_celeba_attributes_require_their_file(tmp_path: Path) -> None:
    write_celeba(tmp_path, partitions=(4, 2, 2))
    with pytest.raises(DataError, match="list_attr_celeba.txt"):
        load_dataset(CelebAConfig(root=str(tmp_path), image_size=16, labels=CelebALabels.attributes, download=False))


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "pets", classes={"cat": 10, "dog": 10})
    dataset = load_dataset(FolderConfig(path=str(folder), image_size=8, val_fraction=0.1, test_fraction=0.1))
    assert dataset.num_classes == 2
    assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 20
    assert tuple(dataset.train.images.shape[1:]) == (3, 8, 8)
    grey = load_dataset(FolderConfig(path=str(folder), image_size=8, channels=1))
    assert grey.train.images.shape[1] == 1


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG or JPEG images"):
        load_dataset(FolderConfig(path=str(tmp_path / "empty")))


# --- batching ---------------------------------------------------------------------------------------


def test_train_batches_cover_each_epoch_and_resume_exactly(tmp_path: Path) -> None:
    write_cifar10(tmp_path, train_batches=1, n=40)
    dataset = load_dataset(CIFAR10Config(root=str(tmp_path), val_fraction=0.1))  # 36 training images
    batches = TrainBatches(dataset.train, 8, seed=3, use_labels=True, dynamic_binarization=False)
    assert batches.steps_per_epoch == 4
    epoch = torch.cat([next(batches).y for _ in range(4)])
    assert batches.epoch == 1 and len(epoch) == 32
    seen = [next(batches).x for _ in range(3)]
    state = batches.state_dict()
    expected = next(batches).x
    resumed = TrainBatches(dataset.train, 8, seed=3, use_labels=True, dynamic_binarization=False)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed).x, expected)
    assert not torch.equal(seen[0], expected)


def test_eval_batches_cover_the_split_in_order() -> None:
    from gentrain.data.base import ImageSplit

    split = ImageSplit(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    xs = [b.x.flatten() for b in eval_batches(split, 4, use_labels=True)]
    assert [len(x) for x in xs] == [4, 4, 2] and torch.equal(torch.cat(xs), split.images.flatten())
    limited = list(eval_batches(split, 4, use_labels=False, limit=5))
    assert sum(len(b) for b in limited) == 5 and limited[0].y is None


def test_decode_images_crops_the_centre(tmp_path: Path) -> None:
    from PIL import Image

    from gentrain.data.images import decode_images

    array = np.zeros((30, 50, 3), dtype=np.uint8)
    array[:, 10:40] = 255  # a white centre square 30 wide, black bars left and right
    Image.fromarray(array).save(tmp_path / "a.png")
    out = decode_images([tmp_path / "a.png"], size=6, crop=None, channels=3, desc="test")
    assert out.shape == (1, 3, 6, 6) and out.min() >= 250


# --- damaged input gets one line, a damaged cache is rebuilt --------------------------------------------------


def test_mnist_corrupt_gzip_with_verification_off(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path)
    good = (raw / "train-images-idx3-ubyte.gz").read_bytes()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(good[:40] + bytes(200) + good[240:])  # a damaged deflate stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
        load_dataset(MNISTConfig(root=str(tmp_path), verify=False))


def test_labels_out_of_range_are_refused(tmp_path: Path) -> None:
    from synthetic import write_cifar_batch, write_idx

    raw = write_mnist(tmp_path / "m")
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(20, 12))
    with pytest.raises(DataError, match="label 12: digits are 0-9"):
        load_dataset(MNISTConfig(root=str(tmp_path / "m"), verify=False))
    folder = write_cifar10(tmp_path / "c", train_batches=1)
    write_cifar_batch(folder / "test_batch", 20, seed=5)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch["labels"][3] = 10
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="labels outside the 10 CIFAR-10 classes"):
        load_dataset(CIFAR10Config(root=str(tmp_path / "c")))


@pytest.mark.parametrize("damage", ["truncate", "wrong shape"])
def test_a_damaged_image_cache_is_rebuilt_with_a_warning(tmp_path: Path, caplog, damage: str) -> None:
    folder = write_image_folder(tmp_path / "images", count=12)
    first = load_dataset(FolderConfig(path=str(folder), image_size=16))
    (cache,) = (folder / ".gentrain_cache").glob("*/images.npy")
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[:200])
    else:
        np.save(cache, np.zeros((3, 3, 16, 16), dtype=np.uint8))
    with caplog.at_level(logging.WARNING):
        again = load_dataset(FolderConfig(path=str(folder), image_size=16))
    assert "is damaged" in caplog.text and "decoding again" in caplog.text
    assert torch.equal(again.train.images, first.train.images)


def test_download_into_a_folder_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"  # nothing can be created under a regular file, even by root
    blocker.write_text("")
    with pytest.raises(DataError, match=r"cannot download train-images-idx3-ubyte.gz into .*a_file/MNIST/raw .*"
                                        r"point dataset.root"):
        load_dataset(MNISTConfig(root=str(blocker)))
