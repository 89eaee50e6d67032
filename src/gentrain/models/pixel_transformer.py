"""A pixel Transformer: a decoder-only Transformer over the image in raster order (the dense-attention image
model of Child et al., "Generating Long Sequences with Sparse Transformers", 2019, and of Chen et al.,
"Generative Pretraining from Pixels", 2020), with the output heads of the autoregressive family.

One token per pixel. Token t is the embedding of pixel t - 1 (a learned start token at t = 0) plus a learned
position, so after the causal blocks position t has seen exactly the pixels before t. The colours of pixel t
are then handled as the masked convolutions handle them: the features are copied into one group per colour,
group c adds a mask-A 1x1 convolution of pixel t itself (colours < c only), and the family's colour-masked
output head (CausalNetwork) gives colour c's parameters. A mixture over whole pixels, or a single channel, has
one group and sees nothing of pixel t. Tokens per sub-pixel would also work, at C times the sequence length
(9 times the attention) and with no place for a mixture over whole pixels.

Sampling keeps every block's keys and values (PixelTransformerSession): a pixel's token goes through the
blocks once, when its first colour is drawn; its later colours only rerun the 1x1 layers. Objective, outputs,
conditioning and the sampler's driver: models/autoregressive.py.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.models.autoregressive import AutoregressiveModel, CausalNetwork, SamplingSession
from gentrain.models.schemas.pixel_transformer import PixelTransformerConfig
from gentrain.nn import CausalConv2d, MaskType, pixelwise
from gentrain.nn.transformer import KeyValueCache, TransformerBlock


class PixelTransformerNetwork(CausalNetwork):
    def __init__(self, cfg: PixelTransformerConfig, data: DataInfo, colours: int, num_params: int,
                 num_classes: int):
        width = cfg.hidden_channels
        # reach=None: a position depends on no later one, so the rows up to the current one suffice.
        super().__init__(colours * width, cfg.head_channels, num_params, colours, num_classes,
                         cfg.num_layers * width, None)
        self.width = width
        self.embed = nn.Linear(data.channels, width)
        self.start = nn.Parameter(0.02 * torch.randn(width))  # what position 0 reads: no pixel precedes it
        self.positions = nn.Parameter(0.02 * torch.randn(data.height * data.width, width))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, cfg.num_heads, cfg.mlp_ratio, cfg.dropout, cfg.key_value_heads)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(width)
        # Colour c of the current pixel reads its colours < c; with one colour group there is nothing to read.
        self.current_pixel = None if colours == 1 else \
            CausalConv2d(data.channels, colours * width, (1, 1), (0, 0), MaskType.A, colours)

    def tokens(self, x: Tensor, start: int, end: int) -> Tensor:
        """The inputs of positions start .. end - 1, (B, L, width), from the scaled images x (B, C, rows, W):
        each position reads the pixel before it."""
        pixels = x.flatten(2).transpose(1, 2)  # (B, rows * W, C) in raster order
        embedded = self.embed(pixels[:, max(start - 1, 0) : end - 1])
        if start == 0:
            embedded = torch.cat([self.start.expand(len(x), 1, -1), embedded], dim=1)
        return embedded + self.positions[start:end]

    def transform(self, h: Tensor, class_bias: Optional[Tensor],
                  caches: Optional[list[KeyValueCache]] = None) -> Tensor:
        """The blocks and the final norm over tokens (B, L, width); with `caches`, the next L positions."""
        biases = [None] * len(self.blocks) if class_bias is None else \
            class_bias[:, None].split(self.width, dim=2)  # (B, 1, width) per block
        for index, (block, bias) in enumerate(zip(self.blocks, biases)):
            h = block(h if bias is None else h + bias, None if caches is None else caches[index])
        return self.norm(h)

    def with_current_pixel(self, h: Tensor, x: Tensor, apply: Callable = nn.Module.__call__) -> Tensor:
        """The head's input: a copy of the features h per colour group, each plus what it may read of the
        current pixel x; whole maps, or one pixel's (B, channels) with apply=pixelwise."""
        if self.current_pixel is None:
            return h
        return h.repeat(1, self.colours, *[1] * (h.dim() - 2)) + apply(self.current_pixel, x)

    def features(self, x: Tensor, class_bias: Optional[Tensor]) -> Tensor:
        batch, _, rows, columns = x.shape
        h = self.transform(self.tokens(x, 0, rows * columns), class_bias)
        return self.with_current_pixel(h.transpose(1, 2).reshape(batch, self.width, rows, columns), x)

    def session(self, inputs: Tensor, class_bias: Optional[Tensor]) -> "PixelTransformerSession":
        return PixelTransformerSession(self, inputs, class_bias)


class PixelTransformerSession(SamplingSession):
    """Sampling with a key/value cache: the first time pixel t is asked for, the positions not yet computed (t
    alone, or on the first call of a completion every position of the given rows) go through the blocks,
    attending to the cached ones; every later colour of pixel t reuses its features. The same weights and the
    same function at every position as the whole network (up to the order of floating-point sums)."""

    def __init__(self, network: PixelTransformerNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        super().__init__(network, inputs, class_bias)
        batch, _, height, width = inputs.shape
        like = network.positions.detach()
        self.caches = [KeyValueCache(batch, block.key_value_heads, height * width, block.head_dim, like)
                       for block in network.blocks]
        self.hidden: Optional[Tensor] = None  # the current pixel's features, (B, width)

    def params(self, i: int, j: int) -> Tensor:
        network = self.network
        position, computed = i * self.inputs.shape[-1] + j, self.caches[0].length
        if position >= computed:  # its input, the pixel before it, is final now
            tokens = network.tokens(self.inputs, computed, position + 1)
            self.hidden = network.transform(tokens, self.class_bias, self.caches)[:, -1]
        features = network.with_current_pixel(self.hidden, self.inputs[:, :, i, j], apply=pixelwise)
        return pixelwise(network.head, features)[:, :, None, None]


class PixelTransformer(AutoregressiveModel, config=PixelTransformerConfig):
    """The pixel Transformer: causal self-attention over pixel tokens, a softmax / logistic-mixture /
    Bernoulli output."""

    def build_network(self, cfg: PixelTransformerConfig, data: DataInfo, colours: int,
                      num_classes: int) -> PixelTransformerNetwork:
        if cfg.head_channels < colours:
            raise ConfigError(f"model.head_channels must be at least {colours} to give each of the {colours} "
                              f"colour groups its own channels, got {cfg.head_channels}")
        return PixelTransformerNetwork(cfg, data, colours, self.likelihood.num_params, num_classes)
