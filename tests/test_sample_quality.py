"""FID, KID, precision and recall: exact at zero / one, growing with corruption, cached; both feature
extractors; the start-of-run check for missing Inception weights; and the metrics on a model that is not
a GAN."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import pytest
import torch
from conftest import ONE_THREAD_ENV, run_cli, train_in_process
from synthetic import write_mnist
from test_streaming import file_size_limit
from torch import Tensor

from gentrain.config import FeatureClassifierConfig, FIDConfig
from gentrain.composition import load_dataset
from gentrain.data.base import ImageDataset, ImageSplit
from gentrain.data.mnist import MNISTConfig
from gentrain.errors import ConfigError
from gentrain.metrics import classifier as classifier_module
from gentrain.metrics.cache import cached
from gentrain.metrics.classifier import load_or_train_classifier, split_fingerprint
from gentrain.metrics.features import InceptionFeatures, load_inception
from gentrain.metrics.precision_recall import kth_neighbour_radii, precision_recall
from gentrain.metrics.sample_quality import SampleQuality, inception_score
from gentrain.models.base import GenerativeModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSIFIER = FeatureClassifierConfig(steps=60, batch_size=64)


@pytest.fixture(scope="module")
def small_mnist(shared_data: Path) -> ImageDataset:
    """1000 training and 300 validation digits of the real MNIST."""
    full = load_dataset(MNISTConfig(root=str(shared_data)))
    train = ImageSplit(full.train.images[:1000], full.train.labels[:1000])
    val = ImageSplit(full.val.images[:300], full.val.labels[:300])
    return ImageDataset("mnist", train, val, val, num_classes=10)


@pytest.fixture(scope="module")
def extractor(small_mnist: ImageDataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("classifier-cache")
    return load_or_train_classifier(small_mnist, CLASSIFIER, cache, torch.device("cpu"),
                                    train_fingerprint=split_fingerprint(small_mnist.train), progress=False)


class Replay(GenerativeModel):
    """'Samples' the training images in order, with Gaussian noise of a chosen std added."""

    def __init__(self, dataset: ImageDataset, noise: float):
        super().__init__(dataset.info)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.images = dataset.train.images.float() / 255.0
        self.noise = noise
        self.cursor = 0

    def sample(self, n: int, *, labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        images = self.images[self.cursor : self.cursor + n]
        self.cursor += n
        return (images + self.noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def quality(dataset: ImageDataset, extractor, cache: Path, **overrides) -> SampleQuality:
    cfg = FIDConfig(**{"num_samples": 1000, "batch_size": 250, "kid_subsets": 20, "kid_subset_size": 200,
                       **overrides})
    return SampleQuality(cfg, extractor, dataset, cache, torch.device("cpu"), seed=0, progress=False,
                         train_fingerprint=split_fingerprint(dataset.train))


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(small_mnist, extractor, tmp_path: Path) -> None:
    metrics = quality(small_mnist, extractor, tmp_path)
    scores = [metrics.evaluate(Replay(small_mnist, noise)) for noise in (0.0, 0.15, 0.5)]
    fids = [s["fid"] for s in scores]
    kids = [s["kid"] for s in scores]
    assert abs(fids[0]) < 1e-3, fids  # the reference images themselves
    assert fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids
    # The floor: 300 real held-out digits; better than noisy digits, worse than the reference itself.
    assert fids[0] < scores[0]["fid_floor"] < fids[2]
    assert all(s["fid_floor"] == scores[0]["fid_floor"] for s in scores)
    # Precision and recall against the same reference: the reference itself is inside its own support.
    assert (scores[0]["precision"], scores[0]["recall"]) == (1.0, 1.0)
    assert scores[2]["precision"] < scores[1]["precision"] < 1.0, scores
    assert 0 < scores[0]["precision_floor"] <= 1 and 0 < scores[0]["recall_floor"] <= 1
    assert any("1000 generated images" in note for note in metrics.notes())
    assert not any("kid_std understates" in note for note in metrics.notes())
    # KID subsets of most of the images are all nearly the same subset: the note says kid_std means little
    overlapping = quality(small_mnist, extractor, tmp_path, kid_subset_size=len(small_mnist.train.images) // 2 + 1)
    assert any("kid_std understates" in note for note in overlapping.notes())


def test_precision_and_recall_tell_a_dropped_mode_from_poor_samples() -> None:
    """Two well separated Gaussian modes: a set against itself scores 1 and 1; samples from one mode only keep
    their precision but cover about half the real points (recall about 0.5); samples off the data lose
    precision."""
    generator = torch.Generator().manual_seed(0)

    def two_modes(n: int, modes=(0, 1)) -> Tensor:
        centres = torch.tensor([[-10.0] * 8, [10.0] * 8])[torch.tensor(modes)]
        which = torch.arange(n) % len(centres)
        return centres[which] + torch.randn(n, 8, generator=generator)

    real = two_modes(2000)
    assert precision_recall(real, real) == (1.0, 1.0)
    # Another draw of the same distribution: k = 3 balls in 8 dimensions catch most, not all, of it.
    same_precision, same_recall = precision_recall(real, two_modes(2000))
    assert same_precision > 0.8 and same_recall > 0.8, (same_precision, same_recall)
    precision, recall = precision_recall(real, two_modes(2000, modes=(0,)))
    assert precision > 0.8 and 0.4 < recall < 0.55 < same_recall, (precision, recall)
    precision, recall = precision_recall(real, two_modes(2000) + 5.0)
    assert precision < 0.2, precision
    # The radii are the distance to the k-th nearest other point: on a line of points 0, 1, 2, ... exactly k.
    line = torch.arange(10.0).view(-1, 1)
    torch.testing.assert_close(kth_neighbour_radii(line, 3)[4:6], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(kth_neighbour_radii(line, 3)[0], torch.tensor(3.0))


def test_inception_score_of_known_class_probabilities() -> None:
    """Confident predictions spread evenly over K classes score K; identical predictions score 1; the splits
    protocol gives one score per split."""
    confident = torch.full((1200, 6), -1e4).scatter_(1, (torch.arange(1200) % 6).view(-1, 1), 0.0)
    mean, std = inception_score(confident, splits=4)  # 300 images per split, 50 of each class
    assert mean.item() == pytest.approx(6.0) and std.item() == pytest.approx(0.0, abs=1e-9)
    mean, _ = inception_score(torch.randn(1, 6).expand(600, 6), splits=3)
    assert mean.item() == pytest.approx(1.0)
    # Two classes seen with probability 3/4 and 1/4: exp(KL) = exp(sum_y p(y) log(1 / p(y))) for one-hot p(y|x).
    skewed = torch.full((400, 2), -1e4).scatter_(1, (torch.arange(400) % 4 == 0).long().view(-1, 1), 0.0)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert inception_score(skewed, splits=2)[0].item() == pytest.approx(expected)


def test_inception_score_matches_the_reference_on_uneven_splits() -> None:
    """N = 81 in 10 splits: 10 parts of 8 or 9 rows (torch.chunk made 9 parts of 9) and the std over splits with
    ddof = 0, as torch-fidelity (and the original code) compute it."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    for n, splits in ((81, 10), (1000, 10), (7, 3), (50, 1)):
        logits = torch.randn(n, 1008, generator=torch.Generator().manual_seed(n)) * 4
        reference = isc_features_to_metric(logits, splits=splits, shuffle=False)
        mean, std = inception_score(logits, splits)
        assert mean.item() == pytest.approx(reference["inception_score_mean"], rel=1e-12)
        assert std.item() == pytest.approx(reference["inception_score_std"], rel=1e-9, abs=1e-12)


def test_reference_statistics_are_computed_once_and_cached(small_mnist, extractor, tmp_path: Path, monkeypatch) -> None:
    first = quality(small_mnist, extractor, tmp_path)
    assert len(list(tmp_path.glob("reference-mnist-*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the reference was computed again")

    monkeypatch.setattr(SampleQuality, "_reference", fail)
    second = quality(small_mnist, extractor, tmp_path)
    assert second.floor == first.floor
    replay = second.evaluate(Replay(small_mnist, 0.0))
    assert abs(replay["fid"]) < 1e-3


def test_classifier_extractor_trains_once_and_is_cached(small_mnist, tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    fingerprint = split_fingerprint(small_mnist.train)
    first = load_or_train_classifier(small_mnist, CLASSIFIER, tmp_path, torch.device("cpu"),
                                     train_fingerprint=fingerprint, progress=False)
    assert "training the FID feature classifier" in caplog.text
    [cached] = tmp_path.glob("classifier-mnist-*.pt")
    accuracy = float(torch.load(cached, weights_only=True)["val_accuracy"])
    assert accuracy > 0.5  # 60 steps: well above chance (0.1) on real digits

    def fail(*args, **kwargs):
        raise AssertionError("the classifier was trained again")

    monkeypatch.setattr(classifier_module, "train_classifier", fail)
    second = load_or_train_classifier(small_mnist, CLASSIFIER, tmp_path, torch.device("cpu"),
                                      train_fingerprint=fingerprint, progress=False)
    images = small_mnist.val.images[:16]
    assert torch.equal(first(images), second(images)) and first(images).shape == (16, CLASSIFIER.features)
    assert first.identity == second.identity and "validation accuracy" in second.description


def test_classifier_needs_class_labels(small_mnist, tmp_path: Path) -> None:
    unlabelled = ImageDataset("faces", small_mnist.train, small_mnist.val, small_mnist.test, num_classes=None)
    with pytest.raises(ConfigError, match="needs class labels"):
        load_or_train_classifier(unlabelled, CLASSIFIER, tmp_path, torch.device("cpu"), train_fingerprint="x",
                                 progress=False)


def test_inception_from_a_local_weights_file(tmp_path: Path, monkeypatch) -> None:
    """The FID Inception loads from metrics.fid.inception_weights and gives 2048-d features, grey images included.
    (Random weights of the right shapes: the real file cannot be downloaded here.)"""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        shapes = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    weights = tmp_path / "inception.pth"
    torch.save(shapes.state_dict(), weights)

    extractor = load_inception(str(weights), torch.device("cpu"))
    assert isinstance(extractor, InceptionFeatures)
    features = extractor(torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8))
    assert features.shape == (1, 2048) and torch.isfinite(features).all()
    features, logits = extractor.features_and_logits(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)  # the Inception Score's classes
    with pytest.raises(ConfigError, match="not a file"):
        load_inception(str(tmp_path / "missing.pth"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="not the FID Inception state dict"):
        load_inception(str(empty), torch.device("cpu"))


def test_missing_inception_weights_offline_stop_the_run_before_training(tmp_path: Path, shared_data: Path) -> None:
    """CIFAR-10 uses Inception features by default; with an empty torch cache and no network the run must stop
    at the start with one clear line, not after training."""
    run_dir = tmp_path / "run"
    offline = {**ONE_THREAD_ENV, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    result = run_cli("model=dcgan", "dataset=cifar10", "trainer=debug", f"hydra.run.dir={run_dir}",
                     cwd=tmp_path, env=offline, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("gentrain: error: ") and "Traceback" not in output
    assert "metrics.fid.features=auto (inception for cifar10)" in error_lines[0]
    assert "metrics.fid.inception_weights" in error_lines[0] and "download failed" in error_lines[0]
    assert "training on" not in output and not (run_dir / "checkpoints").exists()


def test_any_model_can_be_scored(tmp_path: Path) -> None:
    """The VAE's samples get val/fid when metrics.fid.enabled=true; its main metric stays bits/dim."""
    root = tmp_path / "data"
    write_mnist(root, n_train=80, n_test=20)
    result = train_in_process(
        tmp_path / "run", "model=vae", "trainer=debug", "trainer.max_steps=4", "trainer.eval_every=2",
        "model.iw_samples=2", f"dataset.root={root}", "dataset.verify=false", "metrics.fid.enabled=true",
        "metrics.fid.num_samples=30", "metrics.fid.kid_subset_size=10", "metrics.fid.classifier.steps=3",
    )
    assert result["main_metric"] == "bits_per_dim"
    assert math.isfinite(result["val"]["fid"]) and math.isfinite(result["val"]["bits_per_dim"])
    assert "fid" not in result["test"]
    assert 0 <= result["val"]["precision"] <= 1 and 0 <= result["val"]["recall"] <= 1
    notes = json.loads((tmp_path / "run" / "metrics.json").read_text())["notes"]
    assert any("30 generated images" in note for note in notes)


def test_sample_counts_kid_cannot_use_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_mnist(root, n_train=80, n_test=20)
    with pytest.raises(ConfigError, match="kid_subset_size"):
        train_in_process(tmp_path / "run", "model=dcgan", "trainer=debug", f"dataset.root={root}",
                         "dataset.verify=false", "metrics.fid.num_samples=50",
                         "metrics.fid.kid_subset_size=60")
    with pytest.raises(ConfigError, match="precision_recall_k=50 needs more than that many samples"):
        train_in_process(tmp_path / "run", "model=dcgan", "trainer=debug", f"dataset.root={root}",
                         "dataset.verify=false", "metrics.fid.num_samples=50",
                         "metrics.fid.kid_subset_size=20", "metrics.fid.precision_recall_k=50")


def test_a_full_disk_while_caching_costs_only_the_next_run_s_time(tmp_path: Path, caplog) -> None:
    state = {"features": torch.zeros(1 << 19)}  # 2 MB, over the limit
    with caplog.at_level(logging.WARNING), file_size_limit(1 << 20):
        assert cached(tmp_path / "reference.pt", "reference statistics", lambda: state) is state
    assert "could not cache the reference statistics" in caplog.text
    assert "File too large" in caplog.text
    assert not list(tmp_path.iterdir())  # no temporary file left behind
