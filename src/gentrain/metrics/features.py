"""Feature extractors for FID and KID, and how images reach them.

Every extractor takes uint8 images (N, C, H, W) with values 0..255 and returns (N, D) float features. Real
images are mapped there from the data's levels; generated images (floats in [0, 1]) are first quantized to
the same levels, so both sides are discrete images, as in the standard FID protocol.

- `InceptionFeatures`: the standard FID network, Inception-v3 with the TensorFlow FID weights (2048-d pool
  features, input resized to 299x299 with TensorFlow 1.x's bilinear filter), via torch-fidelity.
- `ClassifierFeatures` (classifier.py): a small classifier gentrain trains on the dataset's own labels.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Optional, Protocol

import torch
from torch import Tensor, nn

from gentrain.errors import ConfigError

log = logging.getLogger(__name__)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for the FID weights


class FeatureExtractor(Protocol):
    description: str  # for the notes: which network, which features
    identity: str  # changes whenever the features would: part of every cache key
    num_features: int

    def __call__(self, images: Tensor) -> Tensor: ...


def real_to_uint8(images: Tensor, levels: int) -> Tensor:
    """Dataset images with values in [0, levels) -> 0..255."""
    if levels == 256:
        return images.to(torch.uint8)
    return (images.float() * (255.0 / (levels - 1))).round().to(torch.uint8)


def generated_to_uint8(images: Tensor, levels: int) -> Tensor:
    """Samples in [0, 1] -> quantized to the data's levels -> 0..255 (so that they compare with real images)."""
    quantized = (images.float().clamp(0.0, 1.0) * (levels - 1)).round()
    return (quantized * (255.0 / (levels - 1))).round().to(torch.uint8)


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features (2048-d) with the TensorFlow FID weights, as in the FID papers, and the
    network's 1008 class logits for the Inception Score."""

    num_features = 2048
    class_logits = True  # features_and_logits() gives the Inception Score its class probabilities

    def __init__(self, weights: Path):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(weights))
        self.description = f"Inception-v3 pool3 (2048-d, TensorFlow FID weights {weights}, 299x299 TF-bilinear resize)"
        stat = weights.stat()
        self.identity = f"inception:{weights.name}:{stat.st_size}"

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[1] == 1:  # grey images as RGB, the way the network was trained
            images = images.expand(-1, 3, -1, -1)
        features, logits = self.net(images.contiguous())
        return features, logits

    def forward(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[0]


def _weights_problem(reason: str, choice: str) -> ConfigError:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return ConfigError(
        f"{choice}: {reason}. Put {INCEPTION_FILE} (the FID Inception weights torch-fidelity "
        f"uses) in {hub}, or set metrics.fid.inception_weights=/path/to/it, or use metrics.fid.features=classifier "
        f"(datasets with labels) or metrics.fid.enabled=false"
    )


def load_inception(
    weights: Optional[str], device: torch.device, choice: str = "metrics.fid.features=inception"
) -> InceptionFeatures:
    """The FID Inception from `weights`, else the torch hub cache, downloading it there when the machine can.

    Raises a one-line ConfigError (starting with `choice`, the setting that asked for Inception) when neither
    works, so that a run stops before it trains.
    """
    if weights:
        path = Path(weights).expanduser().absolute()
        if not path.is_file():
            raise _weights_problem(f"metrics.fid.inception_weights={weights} is not a file", choice)
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not path.is_file():
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

            log.info("downloading the FID Inception weights to %s", path)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=True)
            except (OSError, ValueError, RuntimeError) as err:  # URLError is an OSError
                raise _weights_problem("the weights are not in the torch cache and the download failed "
                                       f"({err})", choice) from None
    try:
        # torch-fidelity unpickles the file without restrictions; a weights-only load first rejects a file that
        # holds anything but tensors, before any of its code could run.
        torch.load(path, map_location="cpu", weights_only=True)
        return InceptionFeatures(path).to(device)
    except (OSError, RuntimeError, pickle.UnpicklingError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _weights_problem(f"{path} is not the FID Inception state dict ({first_line})", choice) from None
