"""From a run's metrics.fid to a ready SampleQuality (sample_quality.py): whether the metrics are on, which
feature extractor, the checks that must fail before training rather than after it."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from gentrain.config import FeatureExtractorName, FIDConfig
from gentrain.data.base import ImageDataset, ImageSplit, binarize_images
from gentrain.data.images import cache_dir_for
from gentrain.errors import ConfigError
from gentrain.metrics.classifier import load_or_train_classifier, split_fingerprint
from gentrain.metrics.features import load_inception
from gentrain.metrics.sample_quality import REFERENCE_SEED, SampleQuality
from gentrain.models.base import GenerativeModel

log = logging.getLogger(__name__)

SAMPLE_METRICS = ("fid", "kid")  # main metrics SampleQuality provides (it also adds kid_std, precision, recall, floors)


def sample_quality_enabled(cfg: FIDConfig, model: GenerativeModel) -> bool:
    """metrics.fid.enabled, where null means on for the models whose main metric is a sample metric."""
    return cfg.enabled if cfg.enabled is not None else model.main_metric in SAMPLE_METRICS


def build_sample_quality(
    cfg: FIDConfig, *, model: GenerativeModel, dataset: ImageDataset, data_root: Path, device: torch.device,
    seed: int, progress: bool,
) -> Optional[SampleQuality]:
    """The metrics object the config asks for, ready to use, or None when they are off.

    Everything that could fail later (missing Inception weights, a dataset without labels for the classifier,
    sample counts KID cannot use) fails here, before training; reference statistics are computed or loaded.
    """
    if not sample_quality_enabled(cfg, model):
        if model.main_metric in SAMPLE_METRICS:
            log.warning(
                "metrics.fid.enabled=false: this model's main metric (%s) is not computed, so no best checkpoint "
                "is kept and sweeps get nan", model.main_metric,
            )
        return None
    _check(cfg, dataset)
    if model.domains == 2:  # a translation model: FID of each direction against the other domain
        from gentrain.metrics.translation import TranslationQuality

        a, b = dataset.domains
        build = lambda domain: reference_quality(cfg, domain, data_root=data_root, device=device, seed=seed,
                                                 progress=progress)
        quality = TranslationQuality({"a2b": (build(b), a), "b2a": (build(a), b)}, cfg.num_samples)
    else:
        quality = reference_quality(cfg, dataset, data_root=data_root, device=device, seed=seed, progress=progress)
    for note in quality.notes():
        log.info("sample quality: %s", note)
    if quality.floor:
        log.info("sample quality floor: %s", ", ".join(f"{k} {v:.4g}" for k, v in quality.floor.items()))
    return quality


def reference_quality(cfg: FIDConfig, dataset: ImageDataset, *, data_root: Path, device: torch.device, seed: int,
                      progress: bool) -> SampleQuality:
    """SampleQuality against `dataset`'s training split, with its feature extractor and cached reference."""
    features, choice = cfg.features, f"metrics.fid.features={cfg.features.value}"
    if features is FeatureExtractorName.auto:
        features = FeatureExtractorName.classifier if dataset.name == "mnist" else FeatureExtractorName.inception
        choice += f" ({features.value} for {dataset.name})"
    if dataset.dynamic_binarization:
        # The model learns fresh Bernoulli draws of the 8-bit images; one fixed draw stands for them.
        dataset = replace(dataset, train=ImageSplit(binarize_images(dataset.train.images, REFERENCE_SEED),
                                                    dataset.train.labels))
    cache_dir = cache_dir_for(data_root) / "sample_quality"
    train_fingerprint = split_fingerprint(dataset.train)
    if features is FeatureExtractorName.inception:
        extractor = load_inception(cfg.inception_weights, device, choice)
    else:
        extractor = load_or_train_classifier(
            dataset, cfg.classifier, cache_dir, device, train_fingerprint=train_fingerprint, progress=progress,
        )
    return SampleQuality(cfg, extractor, dataset, cache_dir, device, seed=seed, progress=progress,
                         train_fingerprint=train_fingerprint)


def _check(cfg: FIDConfig, dataset: ImageDataset) -> None:
    smallest = min(cfg.num_samples, len(dataset.train))
    if cfg.kid_subset_size > smallest:
        raise ConfigError(
            f"metrics.fid.kid_subset_size={cfg.kid_subset_size} is larger than the {smallest} images KID compares "
            f"per side (metrics.fid.num_samples, capped by the training split): lower it or raise num_samples"
        )
