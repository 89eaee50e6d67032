"""PixelCNN (van den Oord et al., "Pixel Recurrent Neural Networks", 2016).

A k x k convolution with mask A, then residual blocks (ReLU, 1x1, ReLU, k x k mask B, ReLU, 1x1, as in the
paper's Figure 5) and two 1x1 mask-B output layers. Stacked masked k x k kernels leave a blind spot above
and to the right of each pixel, which `gated_pixelcnn` removes. Objective, outputs, conditioning and
sampling: models/autoregressive.py.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from gentrain.data.schemas import DataInfo
from gentrain.models.autoregressive import AutoregressiveModel, CausalNetwork, SamplingSession, layer_biases
from gentrain.models.schemas.autoregressive import PixelCNNConfig
from gentrain.nn import MaskType, masked_square_conv, pixelwise, pointwise_conv


class MaskedResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, colours: int):
        super().__init__()
        inner = channels // 2
        self.reduce = nn.Sequential(nn.ReLU(), pointwise_conv(channels, inner, colours), nn.ReLU())
        self.conv = masked_square_conv(inner, inner, kernel, MaskType.B, colours)
        self.expand = nn.Sequential(nn.ReLU(), pointwise_conv(inner, channels, colours))

    def forward(self, h: Tensor, class_bias: Optional[Tensor]) -> Tensor:
        return self.combine(h, self.conv(self.reduce(h)), class_bias)

    def combine(self, h: Tensor, inner: Tensor, class_bias: Optional[Tensor],
                apply: Callable = nn.Module.__call__) -> Tensor:
        """The block's output from its input and its k x k convolution's output: whole maps, or one pixel's
        features with apply=pixelwise."""
        if class_bias is not None:
            inner = inner + class_bias
        return h + apply(self.expand, inner)


class PixelCNNNetwork(CausalNetwork):
    def __init__(self, cfg: PixelCNNConfig, data: DataInfo, colours: int, num_params: int, num_classes: int):
        width, inner = cfg.hidden_channels, cfg.hidden_channels // 2
        reach = cfg.first_kernel_size // 2 + cfg.num_layers * (cfg.kernel_size // 2)  # rows up, columns aside
        super().__init__(width, cfg.head_channels, num_params, colours, num_classes, cfg.num_layers * inner,
                         (reach, reach))
        self.bias_sizes = [inner] * cfg.num_layers
        self.input_conv = masked_square_conv(data.channels, width, cfg.first_kernel_size, MaskType.A, colours)
        self.blocks = nn.ModuleList(MaskedResidualBlock(width, cfg.kernel_size, colours) for _ in range(cfg.num_layers))

    def features(self, x: Tensor, class_bias: Optional[Tensor]) -> Tensor:
        h = self.input_conv(x)
        for block, bias in zip(self.blocks, layer_biases(class_bias, self.bias_sizes)):
            h = block(h, bias)
        return h

    def session(self, inputs: Tensor, class_bias: Optional[Tensor]) -> "PixelCNNSession":
        return PixelCNNSession(self, inputs, class_bias)


class PixelCNNSession(SamplingSession):
    """Sampling that computes nothing twice (the caching of Ramachandran et al., 2017, "Fast Generation for
    Convolutional Autoregressive Models"): the input map of every k x k convolution is kept, and each step
    computes every layer at pixel (i, j) alone from those maps. Every layer's output at (i, j) depends only on
    its input before (i, j) (and at (i, j) for mask B), which earlier steps wrote, so the parameters are those of
    the whole network (up to the order of floating-point sums)."""

    def __init__(self, network: PixelCNNNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        super().__init__(network, inputs, class_bias)
        blocks = network.blocks
        biases = layer_biases(class_bias, network.bias_sizes)
        self.biases = [None if b is None else b[:, :, 0, 0] for b in biases]  # for one pixel's features (B, C)
        self.weights = [network.input_conv.masked_weight(), *(block.conv.masked_weight() for block in blocks)]
        # One pass over the inputs as they are fills the maps exactly where the inputs are final (the rows a
        # completion is given); every other position is rewritten, pixel by pixel, before a later step reads it.
        self.maps = []
        h = network.input_conv(inputs)
        for block, bias in zip(blocks, biases):
            self.maps.append(block.reduce(h))
            h = block.combine(h, block.conv(self.maps[-1]), bias)

    def params(self, i: int, j: int) -> Tensor:
        network = self.network
        h = network.input_conv.at(self.inputs, i, j, self.weights[0])
        for block, bias, weight, reduced in zip(network.blocks, self.biases, self.weights[1:], self.maps):
            reduced[:, :, i, j] = pixelwise(block.reduce, h)
            h = block.combine(h, block.conv.at(reduced, i, j, weight), bias, apply=pixelwise)
        return pixelwise(network.head, h)[:, :, None, None]


class PixelCNN(AutoregressiveModel, config=PixelCNNConfig):
    """The PixelCNN: masked convolutions with residual blocks, a softmax / logistic-mixture / Bernoulli output."""

    def build_network(self, cfg: PixelCNNConfig, data: DataInfo, colours: int, num_classes: int) -> PixelCNNNetwork:
        return PixelCNNNetwork(cfg, data, colours, self.likelihood.num_params, num_classes)
