"""An offline FID feature extractor: a small CNN that gentrain trains on the dataset's own labels.

The standard Inception network needs downloaded weights and says little about 28x28 digits. This classifier
is trained once per dataset (seeded, independent of the run's seed), cached beside the data (or in the user
cache when the data folder is read-only), and its penultimate layer gives the features. Numbers computed
with it compare only with numbers from the same classifier (same data, same metrics.fid.classifier settings),
never with Inception FIDs from papers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.progress import track
from gentrain.config import FeatureClassifierConfig
from gentrain.data.base import ImageDataset, ImageSplit
from gentrain.errors import ConfigError
from gentrain.metrics.cache import cached
from gentrain.metrics.features import real_to_uint8

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 1  # bump when the network or its training changes, so old caches are not reused
TRAINING_SEED = 0


def _block(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(True)]


class FeatureClassifier(nn.Module):
    """Three strided conv blocks, global average pooling, a feature layer and a linear head.

    Small on purpose (about 0.6M multiply-adds per 28x28 image at width 16), so that it trains in minutes on
    a CPU. Takes uint8 images 0..255 of any size; `features` returns the penultimate activations.
    """

    def __init__(self, channels: int, num_classes: int, cfg: FeatureClassifierConfig):
        super().__init__()
        w = cfg.width
        self.body = nn.Sequential(
            *_block(channels, w), *_block(w, 2 * w), *_block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, cfg.features), nn.ReLU(True),
        )
        self.head = nn.Linear(cfg.features, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images.float() * (2.0 / 255.0) - 1.0)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class ClassifierFeatures(nn.Module):
    """The trained classifier's penultimate layer as a FeatureExtractor (eval mode, no gradients)."""

    def __init__(self, classifier: FeatureClassifier, description: str, identity: str):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.description = description
        self.identity = identity
        self.num_features = classifier.head.in_features

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


def split_fingerprint(split: ImageSplit) -> str:
    """A digest of a split's pixels and labels: cached features and classifiers follow the data, not its path."""
    digest = hashlib.sha256()
    digest.update(str(tuple(split.images.shape)).encode())
    for start in range(0, len(split), 8192):  # a chunk at a time: the split may be on disk (data/stored.py)
        digest.update(split.images[start : start + 8192].contiguous().cpu().numpy().tobytes())
    if split.labels is not None:
        digest.update(split.labels.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def accuracy(classifier: FeatureClassifier, split: ImageSplit, levels: int, device: torch.device,
             batch_size: int) -> float:
    classifier.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            images = real_to_uint8(split.images[start : start + batch_size].to(device), levels)
            predicted = classifier(images).argmax(1).cpu()
            correct += int((predicted == split.labels[start : start + batch_size]).sum())
    return correct / max(1, len(split))


def train_classifier(
    dataset: ImageDataset, cfg: FeatureClassifierConfig, device: torch.device, *, progress: bool
) -> FeatureClassifier:
    """Adam with cross-entropy on random training batches for cfg.steps steps, seeded (TRAINING_SEED)."""
    train = dataset.train
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leaves the run's own random streams untouched
        torch.manual_seed(TRAINING_SEED)
        classifier = FeatureClassifier(dataset.info.channels, dataset.num_classes, cfg).to(device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=cfg.lr)
        classifier.train()
        for _ in track(range(cfg.steps), "train the FID classifier", unit="step", bar=progress):
            index = torch.randint(len(train), (min(cfg.batch_size, len(train)),))
            images = real_to_uint8(train.images[index].to(device), dataset.levels)
            loss = F.cross_entropy(classifier(images), train.labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return classifier.eval()


def load_or_train_classifier(
    dataset: ImageDataset, cfg: FeatureClassifierConfig, cache_dir: Path, device: torch.device, *,
    train_fingerprint: str, progress: bool,
) -> ClassifierFeatures:
    """The cached classifier for this dataset and these settings, trained and cached on the first call.

    `train_fingerprint` is split_fingerprint(dataset.train), computed once by the caller.
    """
    if not dataset.num_classes or dataset.train.labels is None or dataset.train.labels.ndim != 1:
        raise ConfigError(
            f"metrics.fid.features=classifier needs class labels, and {dataset.name} has none; use "
            f"metrics.fid.features=inception"
        )
    key = {
        "version": CLASSIFIER_VERSION, "seed": TRAINING_SEED, "levels": dataset.levels, "classes": dataset.num_classes,
        "train": train_fingerprint, "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "width": cfg.width, "features": cfg.features,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"classifier-{dataset.name}-{digest}.pt"

    def build() -> dict:
        log.info("training the FID feature classifier on %s (%d steps); it is cached for later runs",
                 dataset.name, cfg.steps)
        trained = train_classifier(dataset, cfg, device, progress=progress)
        val_accuracy = accuracy(trained, dataset.val, dataset.levels, device, cfg.batch_size)
        return {"state": trained.state_dict(), "val_accuracy": torch.tensor(val_accuracy)}

    stored = cached(path, "FID feature classifier", build, keys=("state", "val_accuracy"))
    classifier = FeatureClassifier(dataset.info.channels, dataset.num_classes, cfg)
    classifier.load_state_dict(stored["state"])
    classifier.to(device)
    val_accuracy = float(stored["val_accuracy"])
    log.info("FID classifier: validation accuracy %.2f%%", 100 * val_accuracy)
    description = (
        f"gentrain's {dataset.name} classifier ({classifier.head.in_features}-d penultimate layer; {cfg.steps} "
        f"training steps, validation accuracy {100 * val_accuracy:.2f}%, {path.name})"
    )
    return ClassifierFeatures(classifier, description, identity=f"classifier:{digest}")

