"""Sample quality of a translation model (CycleGAN): FID, KID, precision and recall of G(a) against domain B and
of F(b) against domain A, each with sample_quality.py's protocol; the main metric `fid` is their mean.

The translated images are the source domain's held-out (validation) images, then its training images when
metrics.fid.num_samples asks for more, in order: every evaluation translates the same images.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gentrain.data.base import ImageDataset
from gentrain.metrics.sample_quality import SampleQuality


class Translations:
    """Stands in for a model in SampleQuality.evaluate: its 'samples' are translations of fixed source images."""

    conditional = False

    def __init__(self, model, source: Tensor, direction: str):
        self.model, self.source, self.direction = model, source, direction
        self.device, self.data = model.device, model.data
        self.cursor = 0

    def sample(self, n: int, *, labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        images = self.source[self.cursor : self.cursor + n].to(self.device)
        self.cursor += n
        return self.model.translate(images, self.direction)


class TranslationQuality:
    def __init__(self, directions: dict[str, tuple[SampleQuality, ImageDataset]], num_samples: int):
        """directions: 'a2b' -> (SampleQuality against domain B, domain A), 'b2a' -> the reverse."""
        self.directions = {}
        for direction, (quality, source) in directions.items():
            from_train = max(0, num_samples - len(source.val))  # read only what is used (the data may be on disk)
            images = torch.cat([source.val.images[:num_samples], source.train.images[:from_train]])
            self.directions[direction] = (quality, images)
        self.floor = {f"{name}_{direction}": value for direction, (quality, _) in self.directions.items()
                      for name, value in quality.floor.items()}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        scores = {}
        for direction, (quality, images) in self.directions.items():
            found = quality.evaluate(Translations(model, images, direction))
            scores.update({f"{name}_{direction}": value for name, value in found.items() if "floor" not in name})
        scores["fid"] = (scores["fid_a2b"] + scores["fid_b2a"]) / 2
        return {**scores, **self.floor}

    def notes(self) -> list[str]:
        notes = ["fid: the mean of fid_a2b (G(a) against domain B) and fid_b2a (F(b) against domain A); each "
                 "translates the source domain's validation images, then its training images, as many as samples"]
        for direction, (quality, _) in self.directions.items():
            notes += [f"{direction}: {note}" for note in quality.notes()]
        return notes
