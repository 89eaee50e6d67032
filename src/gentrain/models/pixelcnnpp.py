"""PixelCNN++ (Salimans et al., "PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture
Likelihood and Other Modifications", 2017).

Two streams instead of masks (nn/shifted.py). The down stream `u` starts from the image shifted one row down
and sees the rows above the current pixel; the down-right stream `ul` also reads the image shifted one column
right and the `u` stream at its own position, so it sees the rows above and the pixels to the left: every
earlier pixel, no blind spot, and nothing of the current one. Each stream is a sequence of gated residual
blocks (concatenated ELUs, dropout, a sigmoid gate) over three resolutions: a first pass downsampled twice by
strided convolutions, a second pass upsampled back by transposed ones, each block of the second reading a skip
from the matching block of the first. The output is the discretized logistic mixture over whole pixels (its
colours coupled linearly inside the pixel: distributions.py); objective, conditioning and the sampler's
driver: models/autoregressive.py. Weight normalization and its data-dependent initialization are left out.

The forward pass is written once, as stages over whole maps (`Stages`). Sampling records them (`Tape`) and
replays, for each pixel, only what can still change (`PixelCNNPPSession`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.models.autoregressive import (
    AutoregressiveModel,
    AutoregressiveNetwork,
    SamplingSession,
    layer_biases,
)
from gentrain.models.schemas.autoregressive import PixelOutput
from gentrain.models.schemas.pixelcnnpp import PixelCNNPPConfig
from gentrain.nn.masked import shift_down
from gentrain.nn.shifted import (
    PointwiseConv2d,
    ShiftedConv2d,
    ShiftedConvTranspose2d,
    concat_elu,
    last_output,
    shift_right,
)

LEVELS = 3  # resolutions: the image's, half and quarter
U, UL = "u", "ul"  # the streams: rows above only; rows above and pixels to the left (the current row)


class GatedResidualBlock(nn.Module):
    """x + a * sigmoid(b), where (a, b) = conv(dropout(concat_elu(c))) and
    c = conv(concat_elu(x)) + nin(concat_elu(aux)).

    Two stages (`inner` gives c, `outer` the rest), so that each reads at most one row above its inputs (the
    sampler's windows)."""

    def __init__(self, channels: int, aux_channels: int, right: bool, dropout: float):
        super().__init__()
        kernel = (2, 2) if right else (2, 3)
        self.conv_in = ShiftedConv2d(2 * channels, channels, kernel, right=right)
        self.aux = PointwiseConv2d(2 * aux_channels, channels) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = ShiftedConv2d(2 * channels, 2 * channels, kernel, right=right)

    def inner(self, x: Tensor, *aux: Tensor) -> Tensor:
        c = self.conv_in(concat_elu(x))
        if aux:  # the other stream and / or the first pass's skip, at the same position
            c = c + self.aux(concat_elu(torch.cat(aux, dim=1)))
        return c

    def outer(self, x: Tensor, inner: Tensor, class_bias: Optional[Tensor] = None) -> Tensor:
        c = self.conv_out(self.dropout(concat_elu(inner)))
        if class_bias is not None:
            c = c + class_bias
        value, gate = c.chunk(2, dim=1)
        return x + value * torch.sigmoid(gate)


class Stage(NamedTuple):
    """One recorded step of the forward pass: maps[output] = fn(*maps[inputs])."""

    fn: Callable[..., Tensor]
    inputs: tuple[int, ...]
    output: int
    stream: str
    level: int  # the output's resolution: 0 the image's, 1 half, 2 quarter
    scale: int  # 0 same resolution as the inputs, +1 downsampled, -1 upsampled


class Stages:
    """Runs the forward pass's stages on whole maps (training, evaluation)."""

    def __call__(self, stream: str, scale: int, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        return fn(*inputs)


class Tape(Stages):
    """Runs the stages and keeps every map and stage, for the sampler to replay where inputs change."""

    def __init__(self, x: Tensor):
        self.maps, self.levels, self.stages = [x], [0], []
        self.index = {id(x): 0}  # the maps stay alive here, so their ids stay unique

    def __call__(self, stream: str, scale: int, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        # Channels last: the few pixels a step reads lie together in memory (a strided window costs 40x more).
        out = fn(*inputs).contiguous(memory_format=torch.channels_last)
        ids = tuple(self.index[id(t)] for t in inputs)
        level = self.levels[ids[0]] + scale
        self.stages.append(Stage(fn, ids, len(self.maps), stream, level, scale))
        self.index[id(out)] = len(self.maps)
        self.maps.append(out)
        self.levels.append(level)
        return out


def _with_ones(x: Tensor) -> Tensor:
    """A channel of ones, so that the zero padding differs from a black image (PixelCNN++)."""
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def _above(x: Tensor) -> Tensor:
    return shift_down(_with_ones(x))


def _left(x: Tensor) -> Tensor:
    return shift_right(_with_ones(x))


class PixelCNNPPNetwork(AutoregressiveNetwork):
    def __init__(self, cfg: PixelCNNPPConfig, data: DataInfo, num_params: int, num_classes: int):
        f, n = cfg.num_filters, cfg.num_blocks
        # First pass: n blocks per level; second pass: n at the lowest level, n + 1 above it (the extra one
        # reads the skip of the level's downsampling or first stage). Both streams, 2f biases per block.
        second_pass = [n, n + 1, n + 1]  # lowest level first
        blocks = 2 * (LEVELS * n + sum(second_pass))
        super().__init__(num_classes, blocks * 2 * f)
        self.bias_sizes = [2 * f] * blocks
        channels = data.channels + 1  # the channel of ones
        self.u_first = ShiftedConv2d(channels, f, (2, 3), right=False)
        self.ul_first_above = ShiftedConv2d(channels, f, (1, 3), right=False)
        self.ul_first_left = ShiftedConv2d(channels, f, (2, 1), right=True)

        def blocks_of(count: int, right: bool, aux: int) -> nn.ModuleList:
            return nn.ModuleList(GatedResidualBlock(f, aux, right, cfg.dropout) for _ in range(count))

        # u's blocks read nothing else in the first pass and u's skip in the second; ul's read u, then u and
        # ul's skip.
        self.first_u = nn.ModuleList(blocks_of(n, False, 0) for _ in range(LEVELS))
        self.first_ul = nn.ModuleList(blocks_of(n, True, f) for _ in range(LEVELS))
        self.second_u = nn.ModuleList(blocks_of(k, False, f) for k in second_pass)
        self.second_ul = nn.ModuleList(blocks_of(k, True, 2 * f) for k in second_pass)
        steps = range(LEVELS - 1)
        self.down_u = nn.ModuleList(ShiftedConv2d(f, f, (2, 3), right=False, stride=2) for _ in steps)
        self.down_ul = nn.ModuleList(ShiftedConv2d(f, f, (2, 2), right=True, stride=2) for _ in steps)
        self.up_u = nn.ModuleList(ShiftedConvTranspose2d(f, f, right=False) for _ in steps)
        self.up_ul = nn.ModuleList(ShiftedConvTranspose2d(f, f, right=True) for _ in steps)
        self.head = nn.Sequential(nn.ELU(), PointwiseConv2d(f, num_params))

    def ul_first(self, from_above: Tensor, left: Tensor) -> Tensor:
        return from_above + self.ul_first_left(left)

    def forward(self, x: Tensor, class_bias: Optional[Tensor] = None, stages: Stages = Stages()) -> Tensor:
        biases = iter(layer_biases(class_bias, self.bias_sizes))

        def block(stream: str, module: GatedResidualBlock, x: Tensor, *aux: Tensor) -> Tensor:
            inner = stages(stream, 0, module.inner, x, *aux)
            return stages(stream, 0, partial(module.outer, class_bias=next(biases)), x, inner)

        above, left = stages(U, 0, _above, x), stages(UL, 0, _left, x)
        us = [stages(U, 0, self.u_first, above)]
        # ul's first stage reads the row above at the columns to the right too: that part belongs to u, so
        # that every ul stage reads no column to the right of its own (the sampler's columns).
        uls = [stages(UL, 0, self.ul_first, stages(U, 0, self.ul_first_above, above), left)]
        for level in range(LEVELS):
            if level:
                us.append(stages(U, 1, self.down_u[level - 1], us[-1]))
                uls.append(stages(UL, 1, self.down_ul[level - 1], uls[-1]))
            for block_u, block_ul in zip(self.first_u[level], self.first_ul[level]):
                us.append(block(U, block_u, us[-1]))
                uls.append(block(UL, block_ul, uls[-1], us[-1]))
        u, ul = us.pop(), uls.pop()
        for index, (blocks_u, blocks_ul) in enumerate(zip(self.second_u, self.second_ul)):
            if index:
                u = stages(U, -1, self.up_u[index - 1], u)
                ul = stages(UL, -1, self.up_ul[index - 1], ul)
            for block_u, block_ul in zip(blocks_u, blocks_ul):
                u = block(U, block_u, u, us.pop())
                ul = block(UL, block_ul, ul, u, uls.pop())
        return stages(UL, 0, self.head, ul)

    def session(self, inputs: Tensor, class_bias: Optional[Tensor]) -> "PixelCNNPPSession":
        return PixelCNNPPSession(self, inputs, class_bias)


class PixelCNNPPSession(SamplingSession):
    """Sampling that recomputes only what can change.

    A map's row p at level l depends on the image's rows up to p * 2**l only (strided convolutions read rows
    2p - 1 and 2p, transposed ones row r // 2), so while row i is drawn only row i // 2**l of each level whose
    2**l divides i changes, and the u stream's rows depend on earlier image rows only: they are computed once,
    when row i starts (each stage computing its row alone from the two rows it reads: `last_output`). The ul
    stream reads no column to its right, so a pixel's ul features depend on earlier pixels only: for pixel
    (i, j) every ul stage computes position (i, j) // 2**l alone, at each level whose 2**l divides i and j,
    from the 2 x 2 pixels it reads of maps that hold every earlier position. The parameters are the whole
    network's, up to the order of floating-point sums.
    """

    def __init__(self, network: PixelCNNPPNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        super().__init__(network, inputs, class_bias)
        # One pass over the inputs as they are fills every map exactly where the inputs are final (the rows a
        # completion is given); every other row is rewritten before a later step reads it.
        self.tape = Tape(inputs)
        network(inputs, class_bias, self.tape)
        self.row: Optional[int] = None

    def _update(self, i: int, j: Optional[int]) -> None:
        """Row i // 2**l of the u stream's stages (j None), or pixel (i, j) // 2**l of the ul stream's, at
        each level l whose 2**l divides i (and j)."""
        maps, stream = self.tape.maps, U if j is None else UL
        for stage in self.tape.stages:
            step = 1 << stage.level
            if stage.stream != stream or i % step or (j or 0) % step:
                continue
            r = i >> stage.level
            rows, keep_row = self._window(r, stage.scale)
            if j is None:
                out = stage.fn(*(maps[k][:, :, rows] for k in stage.inputs))
                maps[stage.output][:, :, r] = out[:, :, keep_row]
            else:
                c = j >> stage.level
                columns, keep_column = self._window(c, stage.scale)
                out = stage.fn(*(maps[k][:, :, rows, columns] for k in stage.inputs))
                maps[stage.output][:, :, r, c] = out[:, :, keep_row, keep_column]

    @staticmethod
    def _window(r: int, scale: int) -> tuple[slice, int]:
        """The input rows (or columns) that output row r reads, and which row of the output they give is r."""
        if scale == 0:  # rows r - 1 and r
            return slice(max(0, r - 1), r + 1), -1
        if scale == 1:  # rows 2r - 1 and 2r
            return slice(max(0, 2 * r - 1), 2 * r + 1), -1
        return slice(r // 2, r // 2 + 1), r % 2  # row r // 2, which gives rows r - r % 2 and r - r % 2 + 1

    def params(self, i: int, j: int) -> Tensor:
        if i != self.row:
            self.row = i
            with last_output("row"):
                self._update(i, None)
        with last_output("pixel"):
            self._update(i, j)
        return self.tape.maps[-1][:, :, i : i + 1, j : j + 1].clone()


class PixelCNNPP(AutoregressiveModel, config=PixelCNNPPConfig):
    """PixelCNN++: shifted down and down-right streams of gated residual blocks over three resolutions."""

    auto_output = PixelOutput.logistic_mixture

    def build_network(self, cfg: PixelCNNPPConfig, data: DataInfo, colours: int,
                      num_classes: int) -> PixelCNNPPNetwork:
        if colours > 1:
            raise ConfigError(
                f"model=pixelcnnpp sees no part of the current pixel, so a per-sub-pixel output "
                f"(model.output={cfg.output.value}) works on one-channel images only: this dataset has "
                f"{data.channels} channels; use model.output=logistic_mixture"
            )
        if data.height % 4 or data.width % 4:
            raise ConfigError(f"model=pixelcnnpp works at three resolutions, so the image's sides must be "
                              f"multiples of 4, got {data.height}x{data.width}: set dataset.image_size")
        return PixelCNNPPNetwork(cfg, data, self.likelihood.num_params, num_classes)
