"""A plain single-file PyTorch training loop: the reference gentrain's trainer is timed against (scripts/benchmark.py).

It trains the same network with the same losses and optimizer settings as `gentrain <overrides>` (gentrain's
model classes, built from the same composed config), the textbook way: torchvision's MNIST dataset (or the
CIFAR-10 python batches) with `PILToTensor`, a standard DataLoader, and for each update zero_grad, backward,
step, with the other network of a GAN frozen as the WGAN reference code does. Optimizers use PyTorch's
default implementation. What gentrain adds around the step (gradient norms, the non-finite check, EMA,
logging) is left out.

Prints one JSON line per timing window of --window steps and a summary line at the end.

    python scripts/plain/loop.py --data ../shared/datasets --steps 200 --window 50 -- experiment=vae_binarized_mnist
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from gentrain.composition import build_model, compose, to_config
from gentrain.data.batches import Batch
from gentrain.data.schemas import CIFAR10Config, DataInfo, MNISTConfig
from gentrain.runtime import process_seconds


class CIFAR10Batches(Dataset):
    """The training batches of the CIFAR-10 python version that are present (torchvision's CIFAR10 insists on
    all five, and ../shared/datasets holds a subset)."""

    def __init__(self, root: Path, transform):
        images, labels = [], []
        for path in sorted((root / "cifar-10-batches-py").glob("data_batch_*")):
            with path.open("rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += entry["labels"]
        self.images, self.labels, self.transform = np.concatenate(images), labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(torch.from_numpy(self.images[index])), self.labels[index]


def training_data(config, root: Path) -> tuple[Dataset, DataInfo]:
    """The training images, resized per image in the DataLoader (the textbook way) when dataset.image_size asks."""
    size = config.image_size
    resize = [transforms.Resize((size, size), antialias=True)] if size else []
    if isinstance(config, MNISTConfig):
        transform = transforms.Compose([transforms.PILToTensor(), *resize])
        train = datasets.MNIST(str(root), train=True, download=False, transform=transform)
        # gentrain holds the last 10% out for validation
        return Subset(train, range(54_000)), DataInfo(1, size or 28, size or 28, levels=256, num_classes=10)
    if isinstance(config, CIFAR10Config):
        return CIFAR10Batches(root, transforms.Compose(resize)), DataInfo(3, size or 32, size or 32, 256, 10)
    raise SystemExit(f"the plain loop knows mnist and cifar10, not {type(config).__name__}")


def make_optimizer(params, spec):
    common = {"lr": spec.lr, "eps": spec.eps, "weight_decay": spec.weight_decay}
    name = spec.name.value
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, betas=tuple(spec.betas), **common)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, momentum=spec.momentum, **common)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def plain_updates(model, params: dict, optimizers: dict, batch: Batch, step: int):
    """One training step the textbook way: for each update of the model, zero_grad, backward, step, with the
    other networks' parameters frozen (a GAN's, as the WGAN reference code does). -> the last loss."""
    loss = None
    for update in model.updates():
        if step % update.every:
            continue
        others = [p for name, ps in params.items() if name != update.optimizer for p in ps]
        for p in others:
            p.requires_grad_(False)
        loss = update.loss(batch, step).loss
        optimizers[update.optimizer].zero_grad()
        loss.backward()
        optimizers[update.optimizer].step()
        for p in others:
            p.requires_grad_(True)
        if update.after_step is not None:
            update.after_step()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root (MNIST/raw, cifar-10-batches-py)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--window", type=int, default=50, help="steps per timing window")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("overrides", nargs="*", help="gentrain config overrides naming the model and dataset")
    args = parser.parse_args()

    config = to_config(compose(args.overrides))
    binarize = config.dataset.binarize.value
    if binarize == "static":
        raise SystemExit("the plain loop binarizes dynamically only")
    dynamic_binarization = binarize == "dynamic"

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset, info = training_data(config.dataset, args.data)
    if dynamic_binarization:
        info = DataInfo(info.channels, info.height, info.width, levels=2, num_classes=info.num_classes)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda")
    model = build_model(config.model, info).to(device)
    model.train()
    specs = model.optimizer_specs()
    params = {name: [p for p in spec.params if p.requires_grad] for name, spec in specs.items()}
    optimizers = {name: make_optimizer(params[name], spec.config) for name, spec in specs.items()}
    conditional = model.conditional

    step, window_start, loss = 0, time.perf_counter(), None
    start = window_start
    while step < args.steps:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if dynamic_binarization:
                x = (torch.rand(x.shape, device=device) * 255.0 < x).to(torch.uint8)
            batch = Batch(x, y.to(device, non_blocking=True) if conditional else None)
            stepped = plain_updates(model, params, optimizers, batch, step)
            loss = stepped if stepped is not None else loss  # a GAN step may skip the generator
            step += 1
            if step == 1:
                print(json.dumps({"seconds_to_first_step": process_seconds()}), flush=True)
            if step % args.window == 0:
                value = loss.item()  # also waits for the GPU, so the window is timed honestly
                now = time.perf_counter()
                print(json.dumps({"window_images_per_sec": args.window * args.batch_size / (now - window_start),
                                  "loss": value}), flush=True)
                window_start = now
            if step == args.steps:
                break
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"train_seconds": time.perf_counter() - start, "steps": step, "peak_memory_mb": peak}))


if __name__ == "__main__":
    main()
