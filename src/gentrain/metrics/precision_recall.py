"""Improved precision and recall of generated images (Kynkaanniemi et al., 2019, "Improved Precision and Recall
Metric for Assessing Generative Models").

Each set of features approximates its distribution's support by the union of balls around its points, each ball
reaching the point's k-th nearest neighbour in the same set. Precision is the fraction of generated points inside
the real support (are the samples realistic?); recall the fraction of real points inside the generated support
(is every mode covered?). A set scored against itself gets 1 and 1; dropping a mode lowers recall, not precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 1024  # rows of the distance matrix held at once: CHUNK x N floats


def kth_neighbour_radii(features: Tensor, k: int) -> Tensor:
    """(N,): the distance from each point to its k-th nearest other point of the same set."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per side, got {len(features)}")
    radii = [torch.cdist(rows, features).kthvalue(k + 1, dim=1).values  # + 1: the point itself is at distance 0
             for rows in features.split(CHUNK)]
    return torch.cat(radii)


def fraction_inside(queries: Tensor, points: Tensor, radii: Tensor) -> Tensor:
    """The fraction of `queries` within radii[j] of some points[j]."""
    inside = [(torch.cdist(rows, points) <= radii[None, :]).any(dim=1) for rows in queries.split(CHUNK)]
    return torch.cat(inside).double().mean()


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[Tensor, Tensor]:
    """(precision, recall) of `fake` features against `real` ones, (N, F) and (M, F), in double precision."""
    real, fake = real.double(), fake.double()
    precision = fraction_inside(fake, real, kth_neighbour_radii(real, k))
    recall = fraction_inside(real, fake, kth_neighbour_radii(fake, k))
    return precision, recall
