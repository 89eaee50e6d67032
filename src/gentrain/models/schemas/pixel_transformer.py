"""Options of the pixel Transformer (gentrain/models/pixel_transformer.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from gentrain.config import setting
from gentrain.models.schemas.autoregressive import PixelOutputConfig
from gentrain.registry import model_config


@model_config("pixel_transformer")
@dataclass
class PixelTransformerConfig(PixelOutputConfig):
    """A decoder-only Transformer over the pixels in raster order, one token per pixel, with the family's
    output heads (model.output); model.conditional adds a learned per-class vector to the residual stream
    before every block."""

    hidden_channels: int = setting(64, min=1, max=8192)  # d: the width of the tokens and the residual stream
    num_layers: int = setting(4, min=1, max=1000)  # Transformer blocks
    num_heads: int = setting(4, min=1, max=1024)  # attention heads (hidden_channels must be a multiple)
    # Heads of keys and values, shared by groups of query heads (a divisor of num_heads; null: one per head;
    # 1: multi-query attention): the sampler's key/value cache, and the memory each pixel reads, shrink alike.
    key_value_heads: Optional[int] = setting(None, min=1, max=1024)
    mlp_ratio: int = setting(4, min=1, max=64)  # each block's MLP is mlp_ratio * hidden_channels wide
    dropout: float = setting(0.0, min=0.0, below=1.0)  # in training: on attention weights, residual branches
    head_channels: int = setting(256, min=1, max=8192)  # width of the two output layers

    def problems(self, prefix: str) -> Iterator[str]:
        if self.hidden_channels % self.num_heads:
            yield (f"{prefix}hidden_channels ({self.hidden_channels}) must be a multiple of "
                   f"{prefix}num_heads ({self.num_heads}): the heads split the width equally")
        if self.key_value_heads is not None and self.num_heads % self.key_value_heads:
            yield (f"{prefix}num_heads ({self.num_heads}) must be a multiple of {prefix}key_value_heads "
                   f"({self.key_value_heads}): each key/value head serves an equal group of query heads")
