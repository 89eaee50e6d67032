"""PixelRNN (van den Oord et al., "Pixel Recurrent Neural Networks", 2016): Row LSTM and Diagonal BiLSTM.

A k x k convolution with mask A, then residual LSTM layers (each reads a 2h-wide map, keeps h units of state
and adds a 1x1 mask-B projection of its states back to the map), then the PixelCNN family's two 1x1 mask-B
output layers. Inside a pixel, colours follow R -> G -> B: the state channels are split into colour groups
like every other feature map, and the input-to-state convolutions carry mask B.

- Row LSTM: rows top to bottom. Input-to-state is a masked 1 x k convolution along the row, computed for the
  whole image at once; state-to-state a 1 x k convolution over the previous row's states. A pixel sees a
  triangle above it: in the row d above, columns up to d - 1 + first_kernel_size // 2 to its right.
- Diagonal BiLSTM: the map is skewed so that each diagonal becomes a column; a 1x1 input-to-state and a 2x1
  state-to-state convolution (the neighbour above and the one to the left) run along the columns, left to
  right, and the same again on the mirrored map (above and right). The right-to-left states are shifted down by
  one row, so that they only carry rows above the pixel, and added to the left-to-right ones. A pixel sees
  every earlier pixel: for that, the right-to-left direction of the first layer also reads the image itself (a
  1x1 unmasked convolution: after the shift its whole pixel lies in the past); without it the row above's
  pixels beyond the first layer's reach would be seen by no pixel to their left.

Every recurrent step is one batched convolution over a whole row or diagonal (`lstm_scan` in nn/recurrent.py),
never a per-pixel loop. Sampling keeps every layer's states and computes each layer at the current pixel only
(`RowLSTMSession`, `DiagonalBiLSTMSession`); objective, outputs and the sampling driver:
models/autoregressive.py.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.schemas import DataInfo
from gentrain.models.autoregressive import AutoregressiveModel, CausalNetwork, SamplingSession, layer_biases
from gentrain.models.schemas.autoregressive import PixelRNNConfig, RecurrentLayer
from gentrain.nn import CausalConv2d, MaskType, masked_square_conv, pixelwise, pointwise_conv, shift_down
from gentrain.nn.recurrent import (diagonal_validity, lstm_cell, lstm_scan, neighbours, skew, state_matrix,
                                   unskew)


class RowLSTM(nn.Module):
    def __init__(self, channels: int, units: int, kernel: int, colours: int):
        super().__init__()
        self.input_to_state = CausalConv2d(channels, 4 * units, (1, kernel // 2 + 1), (0, kernel // 2), MaskType.B,
                                           colours, out_chunks=4)
        # The previous row lies wholly before the current one: every colour may read all of it.
        self.state_to_state = nn.Conv1d(units, 4 * units, kernel, padding=kernel // 2, bias=False)
        self.output = pointwise_conv(units, channels, colours)

    def scan(self, inner: Tensor, image: Tensor, cells: bool = False) -> list[Tensor]:
        """[hidden states] (B, h, H, W) of the layer's input map (after the class bias); [hidden, cells] with
        cells=True."""
        gates = self.input_to_state(inner).permute(2, 0, 3, 1).contiguous()  # (H, B, W, 4h): rows are the steps
        out = lstm_scan(gates, self.state_to_state, cells=cells)
        return [t.permute(1, 3, 0, 2) for t in (out if cells else [out])]

    def combine(self, x: Tensor, states: list[Tensor]) -> Tensor:
        return x + self.output(states[0])

    def forward(self, x: Tensor, class_bias: Optional[Tensor], image: Tensor) -> Tensor:
        return self.combine(x, self.scan(x if class_bias is None else x + class_bias, image))


class DiagonalBiLSTM(nn.Module):
    def __init__(self, channels: int, units: int, colours: int, image_channels: int = 0):
        super().__init__()
        self.input_to_state = nn.ModuleList(pointwise_conv(channels, 4 * units, colours, out_chunks=4)
                                            for _ in ("left_to_right", "right_to_left"))
        # The first layer's right-to-left direction: the image itself (see the module's docstring).
        self.image_to_state = nn.Conv2d(image_channels, 4 * units, 1, bias=False) if image_channels else None
        # Both directions at once (groups=2): the states above (tap 0) and before along the row (tap 1).
        self.state_to_state = nn.Conv1d(2 * units, 8 * units, 2, padding=1, groups=2, bias=False)
        self.output = pointwise_conv(units, channels, colours)

    def scan(self, inner: Tensor, image: Tensor, cells: bool = False) -> list[Tensor]:
        """[left-to-right, right-to-left] hidden states (B, h, H, W) of the layer's input map, both in image
        order; with cells=True their cells follow."""
        height, width = inner.shape[-2:]
        # Channels last throughout: the 1x1 convolutions are matrix products, and the steps' copies are cheap.
        inner, image = inner.permute(0, 2, 3, 1), image.permute(0, 2, 3, 1)
        backward = pixelwise(self.input_to_state[1], inner.flip(2))
        if self.image_to_state is not None:
            backward = backward + pixelwise(self.image_to_state, image.flip(2))
        gates = skew(torch.cat([pixelwise(self.input_to_state[0], inner), backward], -1))
        gates = gates.permute(2, 0, 1, 3).contiguous()  # (W + H - 1, B, H, 8h): the diagonals are the steps
        valid = diagonal_validity(height, width, inner.device)
        out = lstm_scan(gates, self.state_to_state, valid=valid, cells=cells)
        maps = [unskew(t.permute(1, 2, 0, 3), width).permute(0, 3, 1, 2).chunk(2, dim=1)
                for t in (out if cells else [out])]
        return [part if direction == 0 else part.flip(-1) for pair in maps for direction, part in enumerate(pair)]

    def combine(self, x: Tensor, states: list[Tensor]) -> Tensor:
        return x + self.output(states[0] + shift_down(states[1]))  # the right-to-left states only from rows above

    def forward(self, x: Tensor, class_bias: Optional[Tensor], image: Tensor) -> Tensor:
        return self.combine(x, self.scan(x if class_bias is None else x + class_bias, image))


class PixelRNNNetwork(CausalNetwork):
    def __init__(self, cfg: PixelRNNConfig, data: DataInfo, colours: int, num_params: int, num_classes: int):
        units, width = cfg.hidden_channels, 2 * cfg.hidden_channels
        super().__init__(width, cfg.head_channels, num_params, colours, num_classes, cfg.num_layers * width, None)
        self.bias_sizes = [width] * cfg.num_layers
        self.input_conv = masked_square_conv(data.channels, width, cfg.first_kernel_size, MaskType.A, colours)
        if cfg.layer is RecurrentLayer.row_lstm:
            self.layers = nn.ModuleList(RowLSTM(width, units, cfg.kernel_size, colours) for _ in range(cfg.num_layers))
        else:
            self.layers = nn.ModuleList(DiagonalBiLSTM(width, units, colours, data.channels if index == 0 else 0)
                                        for index in range(cfg.num_layers))

    def features(self, x: Tensor, class_bias: Optional[Tensor]) -> Tensor:
        h = self.input_conv(x)
        for layer, bias in zip(self.layers, layer_biases(class_bias, self.bias_sizes)):
            h = layer(h, bias, x)
        return h

    def session(self, inputs: Tensor, class_bias: Optional[Tensor]) -> SamplingSession:
        if isinstance(self.layers[0], RowLSTM):
            return RowLSTMSession(self, inputs, class_bias)
        return DiagonalBiLSTMSession(self, inputs, class_bias)


class RecurrentSession(SamplingSession):
    """Sampling that keeps every layer's input map, states and cells: each step computes every layer at pixel
    (i, j) from the states of the pixels before it (see PixelCNNSession). One pass over the inputs as they are
    fills the maps exactly where the inputs are final (the rows a completion is given); every other position is
    rewritten before a later step reads it."""

    def __init__(self, network: PixelRNNNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        super().__init__(network, inputs, class_bias)
        self.pixel_biases = []  # per layer, for one pixel's features (B, C)
        self.inner, self.states = [], []  # per layer: the input map (after the class bias); scan(cells=True)
        h = network.input_conv(inputs)
        for layer, bias in zip(network.layers, layer_biases(class_bias, network.bias_sizes)):
            self.pixel_biases.append(None if bias is None else bias[:, :, 0, 0])
            self.inner.append(h if bias is None else h + bias)
            self.states.append(layer.scan(self.inner[-1], inputs, cells=True))
            h = layer.combine(h, self.states[-1][: len(self.states[-1]) // 2])
        self.first_weight = network.input_conv.masked_weight()
        self.row: Optional[int] = None

    def start_row(self, i: int) -> None:
        """Called before the first pixel of row i."""

    def states_at(self, index: int, i: int, j: int) -> Tensor:
        """Layer `index`'s summed states at (i, j), (B, h), kept; its input at (i, j) is in place already."""
        raise NotImplementedError

    def params(self, i: int, j: int) -> Tensor:
        if i != self.row:
            self.row = i
            self.start_row(i)
        network = self.network
        h = network.input_conv.at(self.inputs, i, j, self.first_weight)
        for index, (layer, bias) in enumerate(zip(network.layers, self.pixel_biases)):
            self.inner[index][:, :, i, j] = h if bias is None else h + bias
            h = h + pixelwise(layer.output, self.states_at(index, i, j))
        return pixelwise(network.head, h)[:, :, None, None]


def value_at(maps: Tensor, i: int, j: int) -> Tensor:
    """maps[:, :, i, j], or zeros outside the image (the states before the first row or column)."""
    if 0 <= i < maps.shape[-2] and 0 <= j < maps.shape[-1]:
        return maps[:, :, i, j]
    return maps.new_zeros(maps.shape[:2])


class RowLSTMSession(RecurrentSession):
    """The state-to-state part of a row is computed once, when the row starts, from the finished row above."""

    def __init__(self, network: PixelRNNNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        super().__init__(network, inputs, class_bias)
        self.weights = [layer.input_to_state.masked_weight() for layer in network.layers]
        self.from_above: list[Tensor] = []

    def start_row(self, i: int) -> None:
        self.from_above = []  # per layer (B, W, 4h)
        for layer, (hidden, _) in zip(self.network.layers, self.states):
            conv = layer.state_to_state
            self.from_above.append(None if i == 0 else neighbours(hidden[:, :, i - 1].transpose(1, 2),
                                                                  conv.kernel_size[0], conv.padding[0])
                                                       @ state_matrix(conv).t())

    def states_at(self, index: int, i: int, j: int) -> Tensor:
        hidden, cell = self.states[index]
        gates = self.network.layers[index].input_to_state.at(self.inner[index], i, j, self.weights[index])
        if self.from_above[index] is not None:
            gates = gates + self.from_above[index][:, j]
        hidden[:, :, i, j], cell[:, :, i, j] = lstm_cell(gates, value_at(cell, i - 1, j))
        return hidden[:, :, i, j]


class DiagonalBiLSTMSession(RecurrentSession):
    """Left to right, the states at (i, j) follow from those above it and before it in the row; the
    right-to-left states of row i - 1, which row i reads, are computed along that row when row i starts (its
    inputs are final by then)."""

    def __init__(self, network: PixelRNNNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        super().__init__(network, inputs, class_bias)
        # Per layer and direction: one matrix over [input | state above | state before along the row | image].
        self.weights = []
        for layer in network.layers:
            taps = layer.state_to_state.weight.chunk(2, dim=0)  # (4h, h, 2) per direction
            self.weights.append([torch.cat([conv.masked_weight()[:, :, 0, 0], tap[:, :, 0], tap[:, :, 1]], 1)
                                 for conv, tap in zip(layer.input_to_state, taps)])
            if layer.image_to_state is not None:
                self.weights[-1][1] = torch.cat([self.weights[-1][1], layer.image_to_state.weight[:, :, 0, 0]], 1)

    def step(self, index: int, direction: int, i: int, j: int, before: int) -> None:
        """The states of one direction at (i, j), from those above and at column `before` of the same row."""
        hidden, cell = self.states[index][direction], self.states[index][2 + direction]
        features = [self.inner[index][:, :, i, j], value_at(hidden, i - 1, j), value_at(hidden, i, before)]
        if direction == 1 and self.network.layers[index].image_to_state is not None:
            features.append(self.inputs[:, :, i, j])
        features = torch.cat(features, 1)
        gates = F.linear(features, self.weights[index][direction],
                         self.network.layers[index].input_to_state[direction].bias)
        hidden[:, :, i, j], cell[:, :, i, j] = lstm_cell(gates, value_at(cell, i, before))

    def start_row(self, i: int) -> None:
        for index in range(len(self.network.layers)) if i > 0 else ():
            for j in reversed(range(self.inputs.shape[-1])):
                self.step(index, 1, i - 1, j, j + 1)

    def states_at(self, index: int, i: int, j: int) -> Tensor:
        self.step(index, 0, i, j, j - 1)
        forward, backward = self.states[index][:2]
        return forward[:, :, i, j] + value_at(backward, i - 1, j)


class PixelRNN(AutoregressiveModel, config=PixelRNNConfig):
    """PixelRNN: residual Row LSTM or Diagonal BiLSTM layers, a softmax / logistic-mixture / Bernoulli output."""

    def build_network(self, cfg: PixelRNNConfig, data: DataInfo, colours: int, num_classes: int) -> PixelRNNNetwork:
        return PixelRNNNetwork(cfg, data, colours, self.likelihood.num_params, num_classes)
