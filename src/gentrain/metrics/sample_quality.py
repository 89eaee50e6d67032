"""FID, KID, precision and recall of a model's samples against the training split, for any GenerativeModel.

Protocol (also written into every run's notes):
- generated side: metrics.fid.num_samples images from model.sample() in eval mode (EMA weights when
  trainer.ema_decay is set), a fixed noise seed, class labels cycling 0..K-1 for conditional models, quantized
  to the data's levels like real images;
- reference side: FID against the mean and covariance of the features of the whole training split; KID
  (cubic polynomial kernel, unbiased MMD^2) against a fixed random subset of as many training images as
  samples, mean and std over metrics.fid.kid_subsets subsets of metrics.fid.kid_subset_size per side;
- precision and recall (Kynkaanniemi et al., 2019; precision_recall.py) against that same KID reference subset,
  with k = metrics.fid.precision_recall_k nearest-neighbour radii, on the same features;
- with Inception features, the Inception Score (Salimans et al., 2016) of the samples: exp E_x KL(p(y|x) || p(y))
  over the network's 1008 classes, mean and std over metrics.fid.inception_score_splits splits
  (as the reference code cuts them);
- the floor: the same numbers for real held-out (validation) images, as many as samples when the split has
  them: what a perfect model would score at this sample count (FID is biased upwards for small counts).

The statistics are torchmetrics' (FrechetInceptionDistance, KernelInceptionDistance); the features come from
features.py or classifier.py. Reference features and the floor are cached per (extractor, data, sample count).
quality_setup.py turns a run's metrics.fid into a ready SampleQuality.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from gentrain.config import FIDConfig
from gentrain.data.base import ImageDataset
from gentrain.metrics.cache import cached
from gentrain.metrics.classifier import split_fingerprint
from gentrain.metrics.features import FeatureExtractor, generated_to_uint8, real_to_uint8
from gentrain.metrics.precision_recall import precision_recall
from gentrain.models.base import GenerativeModel
from gentrain.progress import track

log = logging.getLogger(__name__)

REFERENCE_VERSION = 1  # bump when the reference computation changes, so old caches are not reused
REFERENCE_SEED = 0  # picks the KID reference subset and the floor's KID subsets
SAMPLE_SEED_OFFSET = 3  # generated images use seed + 3 (the trainer uses + 1 and + 2)


def inception_score(logits: Tensor, splits: int) -> tuple[Tensor, Tensor]:
    """(mean, std) over `splits` parts of exp(mean_x KL(p(y|x) || p(y))), p(y) the part's mean of p(y|x), as the
    reference implementations compute it (Salimans et al.'s code, torch-fidelity): part i holds rows
    [i N // splits, (i + 1) N // splits), so every part is used whatever N is, and the std divides by `splits`."""
    n = len(logits)
    log_p = logits.double().log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = part.exp().mean(0).log()
        scores.append((part.exp() * (part - log_marginal)).sum(1).mean().exp())
    scores = torch.stack(scores)
    return scores.mean(), scores.std(correction=0)


class PrecomputedFeatures(nn.Module):
    """Passes features computed by gentrain's extractor to torchmetrics, which would otherwise run its own."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class SampleQuality:
    """FID and KID of samples against the training split, with the floor of real held-out images.

    Built and checked before training (build_sample_quality); the trainer calls evaluate(model) at every
    validation, inside its eval mode, and adds notes() to the run's notes.
    """

    def __init__(self, cfg: FIDConfig, extractor: FeatureExtractor, dataset: ImageDataset, cache_dir: Path,
                 device: torch.device, *, seed: int, progress: bool, train_fingerprint: str):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.cfg = cfg
        self.extractor = extractor
        self.levels = dataset.levels
        self.device = device
        self.seed = seed
        self.progress = progress
        self.dataset_name = dataset.name
        self.train_images = len(dataset.train)
        self.kid_reference_images = min(len(dataset.train), cfg.num_samples)
        self.floor_images = min(len(dataset.val), cfg.num_samples)
        features = PrecomputedFeatures(extractor.num_features)
        # One process scores the samples (rank 0 under torchrun): torchmetrics must not wait for the others.
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False,
                                            sync_on_compute=False).to(device)
        self.fid.persistent(True)  # its reference statistics go into the cache through state_dict()
        with warnings.catch_warnings():  # it warns that it keeps every feature: num_samples of them, known here
            warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
            self.kid = KernelInceptionDistance(
                feature=features, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, reset_real_features=False,
                sync_on_compute=False,
            ).to(device)

        key = {
            "version": REFERENCE_VERSION, "extractor": extractor.identity, "train": train_fingerprint,
            "val": split_fingerprint(dataset.val), "levels": self.levels, "num_samples": cfg.num_samples,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir / f"reference-{dataset.name}-{digest}.pt"
        reference = cached(path, "FID/KID reference features", lambda: self._reference(dataset),
                           keys=("fid_real", "kid_real", "held_out"))
        self.fid.load_state_dict(reference["fid_real"], strict=False)
        self.fid.to(device)
        self.kid.update(reference["kid_real"].to(device), real=True)
        self.reference_features = reference["kid_real"].to(device)  # precision / recall compare against them too
        held_out = reference["held_out"]
        self.floor = {}
        if len(held_out) >= 2:
            self.floor = {name: float(v) for name, v in self._scores(held_out.to(device), suffix="_floor").items()}

    # --- features ---------------------------------------------------------------------------------------
    def _real_feature_batches(self, images: Tensor, desc: str) -> Iterator[Tensor]:
        """Features of dataset images, batch by batch, on the metrics device."""
        batches = range(0, len(images), self.cfg.batch_size)
        for start in track(batches, desc, unit="batch", bar=self.progress):
            batch = images[start : start + self.cfg.batch_size].to(self.device)
            yield self.extractor(real_to_uint8(batch, self.levels)).float()

    def _reference(self, dataset: ImageDataset) -> dict:
        """FID statistics of the whole training split, features of the KID reference subset and of the held-out
        images for the floor. Streams over the training split, so that only the subsets stay in memory."""
        n = len(dataset.train)
        in_kid_subset = torch.zeros(n, dtype=torch.bool)
        in_kid_subset[torch.randperm(n, generator=torch.Generator().manual_seed(REFERENCE_SEED))
                      [: self.kid_reference_images]] = True
        kid_real, start = [], 0
        for features in self._real_feature_batches(dataset.train.images, f"FID reference ({n} training images)"):
            self.fid.update(features, real=True)
            kid_real.append(features[in_kid_subset[start : start + len(features)].to(self.device)].cpu())
            start += len(features)
        held_out = dataset.val.images[: self.floor_images]
        held_out_features = [f.cpu() for f in self._real_feature_batches(held_out, "FID floor (held-out images)")]
        return {
            "fid_real": {k: v.cpu() for k, v in self.fid.state_dict().items() if k.startswith("real_")},
            "kid_real": torch.cat(kid_real),
            "held_out": (torch.cat(held_out_features) if held_out_features
                         else torch.zeros(0, self.extractor.num_features)),
        }

    def _scores(self, fake_features: Tensor, suffix: str = "") -> dict[str, Tensor]:
        """FID and KID of one set of features against the reference (then forgets them)."""
        n = len(fake_features)
        self.fid.update(fake_features, real=False)
        scores = {f"fid{suffix}": self.fid.compute()}
        if n >= self.cfg.kid_subset_size:
            self.kid.update(fake_features, real=False)
            with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global CPU generator
                torch.random.default_generator.manual_seed(REFERENCE_SEED)
                kid, kid_std = self.kid.compute()
            scores[f"kid{suffix}"], scores[f"kid_std{suffix}"] = kid, kid_std
        k = self.cfg.precision_recall_k
        if k and n > k and len(self.reference_features) > k:
            scores[f"precision{suffix}"], scores[f"recall{suffix}"] = precision_recall(self.reference_features,
                                                                                     fake_features, k)
        self.fid.reset()
        self.kid.reset()
        return {name: value.detach().cpu() for name, value in scores.items()}

    # --- what the trainer calls ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: GenerativeModel) -> dict[str, float]:
        """fid, kid, kid_std, precision and recall of cfg.num_samples samples, with the constant floor values."""
        n = self.cfg.num_samples
        generator = torch.Generator(device=model.device).manual_seed(self.seed + SAMPLE_SEED_OFFSET)
        conditional = model.conditional
        features, logits = [], []
        with_logits = getattr(self.extractor, "class_logits", False)
        for start in track(range(0, n, self.cfg.batch_size), f"FID: sample {n} images", unit="batch",
                           bar=self.progress):
            count = min(self.cfg.batch_size, n - start)
            labels = (torch.arange(start, start + count, device=model.device) % model.data.num_classes
                      if conditional else None)
            images = generated_to_uint8(
                model.sample(count, labels=labels, generator=generator).to(self.device), self.levels)
            if with_logits:
                batch_features, batch_logits = self.extractor.features_and_logits(images)
                logits.append(batch_logits.float())
            else:
                batch_features = self.extractor(images)
            features.append(batch_features.float())
        scores = {name: float(value) for name, value in self._scores(torch.cat(features)).items()}
        if with_logits:
            mean, std = inception_score(torch.cat(logits), min(self.cfg.inception_score_splits, n))
            scores |= {"inception_score": float(mean), "inception_score_std": float(std)}
        return {**scores, **self.floor}

    def notes(self) -> list[str]:
        kid = (
            f"KID: unbiased MMD^2 with the cubic polynomial kernel against a fixed random subset of "
            f"{self.kid_reference_images} training images, mean (kid) and std (kid_std) over {self.cfg.kid_subsets} "
            f"subsets of {self.cfg.kid_subset_size} images per side"
        )
        if 2 * self.cfg.kid_subset_size > min(self.cfg.num_samples, self.kid_reference_images):
            # subsets of most of the images are nearly the same subset: their spread says nothing
            kid += (f" (more than half of the {min(self.cfg.num_samples, self.kid_reference_images)} images "
                    f"compared: the subsets overlap, so kid_std understates the uncertainty; lower "
                    f"metrics.fid.kid_subset_size)")
        k = self.cfg.precision_recall_k
        prc = (
            f"precision / recall (Kynkaanniemi et al., 2019): the fraction of generated images inside the real "
            f"images' support / of real images inside the generated support, each support the union of balls "
            f"reaching every point's k-th nearest neighbour (k = {k}), against the same "
            f"{self.kid_reference_images} training images as KID"
            if k else "precision / recall: off (metrics.fid.precision_recall_k=0)"
        )
        if getattr(self.extractor, "class_logits", False):
            prc += (f"; inception_score: exp E_x KL(p(y|x) || p(y)) over the Inception network's 1008 classes, mean "
                    f"and std (ddof 0) over {self.cfg.inception_score_splits} splits of the samples, as torch-fidelity")
        if not self.floor:
            floor = "no floor: the validation split has fewer than 2 images"
        else:
            floor = (
                f"fid_floor, kid_floor, precision_floor, recall_floor: the first {self.floor_images} real validation "
                f"images scored the same way, "
                f"the best a model can expect at this sample count"
            )
            if "kid_floor" not in self.floor:
                floor += " (no kid_floor: fewer held-out images than metrics.fid.kid_subset_size)"
        return [
            f"fid / kid: {self.cfg.num_samples} generated images (eval mode, EMA weights when trainer.ema_decay is "
            f"set, fixed noise, quantized to {self.levels} levels) against the {self.dataset_name} training split; FID "
            f"against the feature mean and covariance of all {self.train_images} training images; {kid}; features: "
            f"{self.extractor.description}",
            prc,
            floor,
        ]
