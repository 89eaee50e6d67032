"""Small datasets written in the official file formats, for loader tests that need no download."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path = path.with_suffix(path.suffix + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, (n_train,)))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (n_test,)))
    return raw


def write_cifar_batch(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": f"synthetic batch {seed}",
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(root: Path, train_batches: int = 5, n: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, train_batches + 1):
        write_cifar_batch(folder / f"data_batch_{i}", n, seed=i)
    write_cifar_batch(folder / "test_batch", n, seed=99)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_cases_per_batch": n}, protocol=2))
    return folder


def write_celeba(root: Path, partitions: tuple[int, int, int] = (8, 3, 3), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    partition_lines, identity_lines = [], []
    index = 1
    for code, count in enumerate(partitions):
        for _ in range(count):
            name = f"{index:06d}.jpg"
            Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(images / name, quality=90)
            partition_lines.append(f"{name} {code}")
            identity_lines.append(f"{name} {int(rng.integers(1, 50))}")
            index += 1
    (folder / "list_eval_partition.txt").write_text("\n".join(partition_lines) + "\n")
    (folder / "identity_CelebA.txt").write_text("\n".join(identity_lines) + "\n")
    return folder


def write_image_folder(folder: Path, classes: dict[str, int] | None = None, count: int = 12, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    groups = classes or {"": count}
    for cls, n in groups.items():
        target = folder / cls if cls else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array).save(target / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return folder


def write_binarized_mnist(folder: Path, rows: tuple[int, int, int] = (30, 10, 10), seed: int = 0) -> dict:
    """binarized_mnist_{train,valid,test}.amat as Larochelle and Murray publish them: one image per line, 784
    values 0 or 1 separated by spaces. -> split -> the (N, 784) values written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, name, n in zip(("train", "val", "test"), ("train", "valid", "test"), rows):
        values = (rng.random((n, 784)) < 0.2).astype(np.uint8)
        lines = [" ".join(str(v) for v in row) for row in values]
        (folder / f"binarized_mnist_{name}.amat").write_text("\n".join(lines) + "\n")
        written[split] = values
    return written
