"""Numbers that judge a model: bits per dimension (and, later, sample-quality metrics)."""

from gentrain.metrics.bits import LN2, bits_per_dim

__all__ = ["LN2", "bits_per_dim"]
