"""dataset.binarize=fixed: the published binarized MNIST (Larochelle and Murray), on small files in its format
(the real ones cannot be downloaded here): read exactly, verified, downloaded when missing, refused when damaged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from synthetic import write_binarized_mnist

import gentrain.data.binarized_mnist as binarized_mnist
from gentrain.composition import build_model, load_dataset, to_config
from gentrain.errors import ConfigError, DataError


def load(root: Path, *overrides: str):
    config = to_config(compose_config("dataset=mnist", "dataset.binarize=fixed", f"dataset.root={root}", *overrides))
    return load_dataset(config.dataset), config


def test_the_published_splits_are_read_exactly(tmp_path: Path) -> None:
    written = write_binarized_mnist(tmp_path / "binarized_mnist")
    dataset, config = load(tmp_path, "dataset.verify=false", "dataset.download=false")
    assert dataset.levels == 2 and dataset.num_classes is None and not dataset.dynamic_binarization
    assert config.dataset.data_info() == dataset.info
    for split, values in written.items():  # the files' own splits, in order, nothing held out or redrawn
        images = getattr(dataset, split).images
        assert images.dtype == torch.uint8 and images.shape == (len(values), 1, 28, 28)
        assert np.array_equal(images.reshape(len(values), 784).numpy(), values)
    model = build_model(to_config(compose_config("model=pixelcnn", "dataset.binarize=fixed")).model, dataset.info)
    assert model.data.levels == 2  # a Bernoulli output (output=auto on binary data)


def test_the_published_checksums_are_verified(tmp_path: Path) -> None:
    write_binarized_mnist(tmp_path / "binarized_mnist")
    with pytest.raises(DataError, match=r"binarized_mnist_train.amat does not match the published sha256 ad693b29.*"
                                        r"dataset.verify=false"):
        load(tmp_path)


def test_missing_files_are_downloaded_and_checked(tmp_path: Path, monkeypatch) -> None:
    mirror = tmp_path / "mirror"
    written = write_binarized_mnist(mirror, seed=3)
    digests = {split: hashlib.sha256((mirror / name).read_bytes()).hexdigest()
               for split, (name, _, _) in binarized_mnist.FILES.items()}
    published = {split: (name, len(written[split]), digests[split])
                 for split, (name, _, _) in binarized_mnist.FILES.items()}
    monkeypatch.setattr(binarized_mnist, "FILES", published)
    root = tmp_path / "data"
    dataset, _ = load(root, f"dataset.binarized_url=file://{mirror}/")
    assert np.array_equal(dataset.test.images.reshape(-1, 784).numpy(), written["test"])
    assert sorted(p.name for p in (root / "binarized_mnist").iterdir()) == sorted(n for n, _, _ in published.values())
    (root / "binarized_mnist" / "binarized_mnist_test.amat").unlink()
    monkeypatch.setitem(published, "test", (published["test"][0], 10, "0" * 64))  # a mirror serving another file
    with pytest.raises(DataError, match="sha256 .* does not match the published 0000"):
        load(root, f"dataset.binarized_url=file://{mirror}/")
    assert sorted(p.name for p in (root / "binarized_mnist").iterdir()) == [published["train"][0], published["val"][0]]


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2 + 11], "values on .* lines, not 784 per line"),  # cut mid-line
    (lambda text: text.replace("1", "7", 1), "characters other than 0, 1 and whitespace"),
    (lambda text: "", "0 values on 0 lines"),
])
def test_a_damaged_file_is_one_line_naming_it(tmp_path: Path, damage, message: str) -> None:
    write_binarized_mnist(tmp_path / "binarized_mnist")
    path = tmp_path / "binarized_mnist" / "binarized_mnist_valid.amat"
    path.write_text(damage(path.read_text()))
    with pytest.raises(DataError, match=f"binarized_mnist_valid.amat holds .*{message}|{message}"):
        load(tmp_path, "dataset.verify=false", "dataset.download=false")


def test_fixed_is_mnist_s_published_binarization_only() -> None:
    with pytest.raises(ConfigError,
                       match="binarize=fixed is the standard binarized MNIST .* use it with dataset=mnist"):
        to_config(compose_config("dataset=cifar10", "dataset.binarize=fixed"))
    with pytest.raises(ConfigError, match="leave dataset.image_size null"):
        to_config(compose_config("dataset.binarize=fixed", "dataset.image_size=32"))
    with pytest.raises(ConfigError, match="needs class labels"):
        config = to_config(compose_config("model=pixelcnn", "model.conditional=true", "dataset.binarize=fixed"))
        build_model(config.model, config.dataset.data_info())
