"""A decoder-only Transformer block for autoregressive models: pre-norm (as GPT-2), causal self-attention
through PyTorch's fused `scaled_dot_product_attention`, and a key/value cache, so that a sampler computes each
new position once and reads every earlier one from the cache.

Training and sampling run the same `forward`: a whole sequence (no cache), or the next positions of one whose
earlier keys and values the cache holds.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KeyValueCache:
    """The keys and values of the positions computed so far, in tensors of the whole sequence's length
    (B, heads, positions, head_dim): appending writes in place, nothing is reallocated."""

    def __init__(self, batch: int, heads: int, positions: int, head_dim: int, like: Tensor):
        self.keys = like.new_zeros(batch, heads, positions, head_dim)
        self.values = torch.zeros_like(self.keys)
        self.length = 0  # positions held

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the keys and values of the next positions; -> those of every position held (new ones too)."""
        start, end = self.length, self.length + keys.shape[2]
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class TransformerBlock(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)); each position attends to itself and the positions
    before it. `dropout` applies, in training, to the attention weights and to both residual branches.

    `key_value_heads` (a divisor of `heads`; None: as many) lets groups of query heads share keys and values
    (grouped-query attention; 1 is Shazeer's 2019 multi-query attention): a cache that many times smaller, and
    as much less memory read per sampled position, which is what a cached step's attention costs."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float,
                 key_value_heads: Optional[int] = None):
        super().__init__()
        self.key_value_heads = key_value_heads or heads
        if width % heads or heads % self.key_value_heads:
            raise ValueError(f"a width of {width} does not split into {heads} heads sharing "
                             f"{self.key_value_heads} key/value heads")
        self.heads, self.dropout = heads, dropout
        self.head_dim = width // heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, width + 2 * self.key_value_heads * self.head_dim)
        self.attention_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        inner = mlp_ratio * width
        self.mlp = nn.Sequential(nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, width))

    def forward(self, x: Tensor, cache: Optional[KeyValueCache] = None) -> Tensor:
        """x (B, L, width) at positions start .. start + L - 1, where start is what `cache` holds (0 without
        one) -> (B, L, width)."""
        batch, length, width = x.shape
        key_width = self.key_value_heads * self.head_dim
        q, k, v = self.qkv(self.attention_norm(x)).split([width, key_width, key_width], dim=-1)
        q = q.view(batch, length, self.heads, -1).transpose(1, 2)  # (B, heads, L, head_dim)
        k, v = (t.view(batch, length, self.key_value_heads, -1).transpose(1, 2) for t in (k, v))
        start = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(k, v)
        dropout = self.dropout if self.training else 0.0
        if start and length == 1:
            # One new position sees every cached one: the query heads sharing a key/value head attend as rows
            # of one group (twice as fast as the grouped kernel for one key/value head; the same sums).
            grouped = q.reshape(batch, self.key_value_heads, -1, self.head_dim)
            attended = F.scaled_dot_product_attention(grouped, k, v, dropout_p=dropout)
            attended = attended.reshape(batch, 1, width)
        else:
            # From position 0 the fused kernel's own causal mask is right; after cached positions its mask
            # would be aligned to the top left, so new positions get an explicit one.
            mask = torch.ones(length, start + length, dtype=torch.bool, device=x.device).tril(start) \
                if start else None
            groups = self.heads // self.key_value_heads  # (SDPA's enable_gqa needs torch 2.5)
            k, v = (k, v) if groups == 1 else (t.repeat_interleave(groups, dim=1) for t in (k, v))
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=start == 0 and length > 1, dropout_p=dropout,
            )
            attended = attended.transpose(1, 2).reshape(batch, length, width)
        x = x + self.residual_dropout(self.attention_out(attended))
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))

    def residual_dropout(self, branch: Tensor) -> Tensor:
        # No call at all when there is nothing to drop: sampling runs this for every pixel of every layer.
        return F.dropout(branch, self.dropout) if self.training and self.dropout else branch
