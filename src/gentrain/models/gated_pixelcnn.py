"""Gated PixelCNN (van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", 2016).

Two stacks per layer (the paper's Figure 2). The vertical stack sees every pixel in the rows above, in a
window that widens with depth; the horizontal stack sees the pixels to the left in the current row and
reads the vertical stack of the same position through a 1x1 link. Together they cover every earlier pixel,
so there is no blind spot. Activations are gated, tanh(W_f * x + V_f y) * sigmoid(W_g * x + V_g y), with y
the class when conditional; the horizontal stack is residual. Objective, outputs and sampling:
models/autoregressive.py.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from gentrain.data.schemas import DataInfo
from gentrain.models.autoregressive import AutoregressiveModel, CausalNetwork, SamplingSession, layer_biases
from gentrain.models.schemas.autoregressive import GatedPixelCNNConfig
from gentrain.nn import CausalConv2d, MaskType, VerticalConv, gated_activation, pixelwise, pointwise_conv, shift_down


class GatedLayer(nn.Module):
    """One gated layer: the first (mask A, reading the image) or a later one (mask B, residual)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, colours: int, first: bool):
        super().__init__()
        self.first = first
        self.vertical = VerticalConv(in_channels, 2 * channels, kernel)
        # The vertical features lie strictly above the current row, so every colour group may read them.
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal = CausalConv2d(
            in_channels, 2 * channels, (1, kernel // 2 + 1), (0, kernel // 2),
            MaskType.A if first else MaskType.B, colours, out_chunks=2,
        )
        self.horizontal_out = pointwise_conv(channels, channels, colours)

    def forward(self, v: Tensor, h: Tensor, class_bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return self.combine(self.vertical(v), self.horizontal(h), h, class_bias)

    def combine(self, v_pre: Tensor, h_conv: Tensor, h: Tensor, class_bias: Optional[Tensor],
                apply: Callable = nn.Module.__call__) -> tuple[Tensor, Tensor]:
        """Both stacks' outputs from the vertical convolution, the horizontal one and the horizontal input: whole
        maps, or one pixel's features with apply=pixelwise."""
        h_pre = h_conv + apply(self.vertical_to_horizontal, v_pre)
        v_out = self.vertical_out(v_pre, class_bias)
        if class_bias is not None:
            h_pre = h_pre + class_bias.chunk(2, dim=1)[1]
        h_out = apply(self.horizontal_out, gated_activation(h_pre))
        return v_out, h_out if self.first else h + h_out

    @staticmethod
    def vertical_out(v_pre: Tensor, class_bias: Optional[Tensor]) -> Tensor:
        return gated_activation(v_pre if class_bias is None else v_pre + class_bias.chunk(2, dim=1)[0])


class GatedPixelCNNNetwork(CausalNetwork):
    def __init__(self, cfg: GatedPixelCNNConfig, data: DataInfo, colours: int, num_params: int, num_classes: int):
        p = cfg.hidden_channels
        layers = 1 + cfg.num_layers
        # Each layer widens the window by kernel_size // 2 up and to both sides; the first vertical layer
        # reads one row more than that, its input being shifted down.
        aside = cfg.first_kernel_size // 2 + cfg.num_layers * (cfg.kernel_size // 2)
        super().__init__(p, cfg.head_channels, num_params, colours, num_classes, layers * 4 * p, (aside + 1, aside))
        self.bias_sizes = [4 * p] * layers  # 2p for the vertical gates, 2p for the horizontal ones
        self.layers = nn.ModuleList(
            [GatedLayer(data.channels, p, cfg.first_kernel_size, colours, first=True)]
            + [GatedLayer(p, p, cfg.kernel_size, colours, first=False) for _ in range(cfg.num_layers)]
        )

    def features(self, x: Tensor, class_bias: Optional[Tensor]) -> Tensor:
        v, h = shift_down(x), x  # the vertical stack starts from the rows strictly above
        for layer, bias in zip(self.layers, layer_biases(class_bias, self.bias_sizes)):
            v, h = layer(v, h, bias)
        return h

    def session(self, inputs: Tensor, class_bias: Optional[Tensor]) -> "GatedPixelCNNSession":
        return GatedPixelCNNSession(self, inputs, class_bias)


class GatedPixelCNNSession(SamplingSession):
    """Sampling that computes nothing twice (see PixelCNNSession): the vertical stack sees only the rows above,
    so each layer's vertical row is computed once, when a row starts; the horizontal stack is computed at pixel
    (i, j) alone from the kept input maps of each layer's horizontal convolution."""

    def __init__(self, network: GatedPixelCNNNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        super().__init__(network, inputs, class_bias)
        self.biases = layer_biases(class_bias, network.bias_sizes)
        self.pixel_biases = [None if b is None else b[:, :, 0, 0] for b in self.biases]  # for (B, C) features
        self.weights = [layer.horizontal.masked_weight() for layer in network.layers]
        self.row: Optional[int] = None
        # One pass fills the maps exactly where the inputs are final (see PixelCNNSession).
        self.vertical_in, self.vertical_pre, self.horizontal_in = [], [], []
        v, h = shift_down(inputs), inputs
        for layer, bias in zip(network.layers, self.biases):
            self.vertical_in.append(v)
            self.horizontal_in.append(h)
            self.vertical_pre.append(layer.vertical(v))
            v, h = layer.combine(self.vertical_pre[-1], layer.horizontal(h), h, bias)

    def _start_row(self, i: int) -> None:
        self.row = i
        if i > 0:
            self.vertical_in[0][:, :, i] = self.inputs[:, :, i - 1]
        layers = self.network.layers
        for index, (layer, bias) in enumerate(zip(layers, self.biases)):
            v_pre = layer.vertical.row(self.vertical_in[index], i)
            self.vertical_pre[index][:, :, i] = v_pre[:, :, 0]
            if index + 1 < len(layers):
                self.vertical_in[index + 1][:, :, i] = layer.vertical_out(v_pre, bias)[:, :, 0]

    def params(self, i: int, j: int) -> Tensor:
        if i != self.row:
            self._start_row(i)
        layers = self.network.layers
        for index, (layer, bias, weight) in enumerate(zip(layers, self.pixel_biases, self.weights)):
            h_in = self.horizontal_in[index]
            _, h = layer.combine(self.vertical_pre[index][:, :, i, j], layer.horizontal.at(h_in, i, j, weight),
                                 h_in[:, :, i, j], bias, apply=pixelwise)
            if index + 1 < len(layers):
                self.horizontal_in[index + 1][:, :, i, j] = h
        return pixelwise(self.network.head, h)[:, :, None, None]


class GatedPixelCNN(AutoregressiveModel, config=GatedPixelCNNConfig):
    """The Gated PixelCNN: vertical and horizontal stacks with gated activations, no blind spot."""

    def build_network(self, cfg: GatedPixelCNNConfig, data: DataInfo, colours: int,
                      num_classes: int) -> GatedPixelCNNNetwork:
        return GatedPixelCNNNetwork(cfg, data, colours, self.likelihood.num_params, num_classes)
