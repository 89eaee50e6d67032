"""What every autoregressive image model shares: the output distribution, the exact-likelihood objective, and
the sampler and completion that draw an image sub-pixel by sub-pixel.

A subclass supplies only its network (an `AutoregressiveNetwork`): scaled images -> the parameters of a
`distributions.PixelLikelihood` at every pixel, where the parameters at (i, j) depend on pixels before (i, j)
only (and on earlier colours of (i, j) when the output is per sub-pixel). The log-likelihood of an image is then
the sum of exact discrete log-probabilities, and bits/dim = NLL / (D ln 2) with nothing left out. The sampler
asks the network for one pixel's parameters at a time (`params_at`): any causal network works as it is, and a
network can answer faster by reusing what it knows (`CausalNetwork` runs only the window its receptive field
covers).
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from gentrain.progress import track
from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.distributions import Bernoulli, Categorical, DiscretizedLogisticMixture, PixelLikelihood
from gentrain.errors import ConfigError
from gentrain.models.likelihood import LikelihoodModel
from gentrain.models.schemas.autoregressive import AutoregressiveConfig, PixelOutput, PixelOutputConfig
from gentrain.nn import pointwise_conv


def make_pixel_likelihood(cfg: PixelOutputConfig, data: DataInfo,
                          auto: PixelOutput = PixelOutput.softmax) -> PixelLikelihood:
    """The output distribution model.output names; `auto`: Bernoulli on binarized data, else `auto`."""
    choice = cfg.output
    if choice is PixelOutput.auto:
        choice = PixelOutput.bernoulli if data.levels == 2 else auto
    if choice is PixelOutput.bernoulli:
        if data.levels != 2:
            raise ConfigError(
                f"model.output=bernoulli needs binarized data, but this dataset has {data.levels} levels: set "
                f"dataset.binarize=static or dynamic, or model.output=softmax|logistic_mixture"
            )
        return Bernoulli(data.levels, data.channels)
    if choice is PixelOutput.softmax:
        return Categorical(data.levels, data.channels)
    return DiscretizedLogisticMixture(data.levels, data.channels, cfg.num_mixtures)


class AutoregressiveNetwork(nn.Module):
    """A causal network: scaled images (B, C, H, W) in [-1, 1] -> likelihood parameters (B, P, H, W).

    `class_bias_channels`: a learned vector per class, looked up once per batch (or sample call), which the
    network adds where it likes (conditional models)."""

    def __init__(self, num_classes: int, class_bias_channels: int):
        super().__init__()
        self.class_embedding = nn.Embedding(num_classes, class_bias_channels) if num_classes else None

    def embed_labels(self, labels: Optional[Tensor]) -> Optional[Tensor]:
        """Class ids (B,) -> the concatenated per-layer biases (B, class_bias_channels); None if unconditional."""
        if self.class_embedding is None:
            return None
        if labels is None:
            raise ValueError("a conditional model needs labels")
        return self.class_embedding(labels)

    def forward(self, x: Tensor, class_bias: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def params_at(self, x: Tensor, class_bias: Optional[Tensor], i: int, j: int) -> Tensor:
        """The likelihood parameters of pixel (i, j), (B, P, 1, 1), for inputs known up to (i, j): by default the
        whole network (exact for any causal network), which subclasses may shorten."""
        return self(x, class_bias)[:, :, i : i + 1, j : j + 1]

    def session(self, inputs: Tensor, class_bias: Optional[Tensor]) -> "SamplingSession":
        """What draws an image pixel by pixel asks for parameters; networks that can reuse what earlier steps
        computed return a session of their own."""
        return SamplingSession(self, inputs, class_bias)


class SamplingSession:
    """The likelihood parameters of one pixel at a time while images are drawn (AutoregressiveModel.generate):
    `params(i, j)` is called in raster order, once every input before (i, j), and the earlier colours of (i, j),
    has been written into `inputs` (the scaled images, a tensor the sampler writes into). This one asks the
    network's params_at every time."""

    def __init__(self, network: AutoregressiveNetwork, inputs: Tensor, class_bias: Optional[Tensor]):
        self.network, self.inputs, self.class_bias = network, inputs, class_bias

    def params(self, i: int, j: int) -> Tensor:
        return self.network.params_at(self.inputs, self.class_bias, i, j)


class CausalNetwork(AutoregressiveNetwork):
    """A causal body `features(x, class_bias)` of convolutions (the PixelCNN family) or recurrent layers
    (PixelRNN), and a pointwise output head.

    `colours` is the number of colour groups the masks keep apart: the image's channels for an output per
    sub-pixel (R, then G given R, then B given R and G), 1 for a mixture over whole pixels. `reach` is (rows
    above, columns to either side) of the current pixel that the features see; None for every earlier row and
    every column (a body whose rows depend on no later row, such as a recurrent one).
    """

    def __init__(self, feature_channels: int, head_channels: int, num_params: int, colours: int,
                 num_classes: int, class_bias_channels: int, reach: Optional[tuple[int, int]]):
        super().__init__(num_classes, class_bias_channels)
        self.colours = colours
        self.reach = reach
        self.head = nn.Sequential(
            nn.ReLU(), pointwise_conv(feature_channels, head_channels, colours),
            nn.ReLU(), pointwise_conv(head_channels, num_params, colours),
        )

    def features(self, x: Tensor, class_bias: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, class_bias: Optional[Tensor] = None) -> Tensor:
        return self.head(self.features(x, class_bias))

    def params_at(self, x: Tensor, class_bias: Optional[Tensor], i: int, j: int) -> Tensor:
        """Only the window the receptive field covers (the rows up to i, the columns within reach of j: inputs
        outside cannot change pixel (i, j)) goes through the body, and only pixel (i, j) through the head."""
        if self.reach is None:  # recurrent layers: every earlier row, every column
            top, left, right = 0, 0, x.shape[-1]
        else:
            rows_above, columns_aside = self.reach
            top, left, right = (max(0, i - rows_above), max(0, j - columns_aside),
                                min(x.shape[-1], j + columns_aside + 1))
        features = self.features(x[:, :, top : i + 1, left:right], class_bias)
        return self.head(features[:, :, -1:, j - left : j - left + 1])


def layer_biases(class_bias: Optional[Tensor], sizes: list[int]) -> list[Optional[Tensor]]:
    """Split the concatenated class biases into one (B, n, 1, 1) tensor per layer (None when unconditional)."""
    if class_bias is None:
        return [None] * len(sizes)
    return [b[:, :, None, None] for b in class_bias.split(sizes, dim=1)]


class AutoregressiveModel(LikelihoodModel):
    """p(x) = prod_i p(x_i | x_<i) over sub-pixels in raster order, trained by exact maximum likelihood."""

    auto_output: ClassVar[PixelOutput] = PixelOutput.softmax  # what model.output=auto means on 8-bit data

    def __init__(self, cfg: PixelOutputConfig, data: DataInfo):
        super().__init__(data)
        self.cfg = cfg
        self.conditional = cfg.conditional
        num_classes = self.require_classes(data) if cfg.conditional else 0
        self.likelihood = make_pixel_likelihood(cfg, data, self.auto_output)
        # Mixture parameters describe a whole pixel, so the network must not see any of it; a per-sub-pixel
        # output lets colour c see colours < c of the current pixel.
        self.per_subpixel = not isinstance(self.likelihood, DiscretizedLogisticMixture)
        colours = data.channels if self.per_subpixel else 1
        if isinstance(cfg, AutoregressiveConfig) and (cfg.hidden_channels < 2 * colours or cfg.head_channels < colours):
            raise ConfigError(
                f"model.hidden_channels must be at least {2 * colours} and model.head_channels at least {colours} "
                f"to give each of the {colours} colour groups its own channels"
            )
        self.network = self.build_network(cfg, data, colours, num_classes)

    def build_network(self, cfg: PixelOutputConfig, data: DataInfo, colours: int,
                      num_classes: int) -> AutoregressiveNetwork:
        raise NotImplementedError

    # --- objective (training and evaluation: models/likelihood.py) ----------------------------------------
    def network_input(self, x: Tensor) -> Tensor:
        """Integer images in [0, levels) -> floats in [-1, 1]."""
        return x.float() * (2.0 / (self.data.levels - 1)) - 1.0

    def nll_nats(self, batch: Batch) -> Tensor:
        """-log p(x) of the discrete images in nats, (B,)."""
        params = self.network(self.network_input(batch.x), self.network.embed_labels(batch.y))
        return -self.likelihood.log_prob(params, batch.x)

    def metric_notes(self) -> list[str]:
        d = self.data
        return [
            f"bits_per_dim: exact negative log-likelihood of the discrete {d.levels}-level images under the "
            f"autoregressive model ({type(self.likelihood).__name__} output), in nats / (D ln 2) with "
            f"D = {d.channels}x{d.height}x{d.width} = {d.num_dims}; nll_nats: the same NLL in nats per image",
        ]

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: Tensor, first_row: int, labels: Optional[Tensor],
                 generator: Optional[torch.Generator], desc: str = "sample") -> Tensor:
        """Draw rows first_row.. of the integer images (B, C, H, W) pixel by pixel, in place; returns them.

        Each step asks the network's sampling session for one pixel's parameters; drawn values are written
        straight into the already scaled network input, which the session reads.
        """
        height, width = self.data.height, self.data.width
        inputs = self.network_input(images)
        session = self.sampling_session(inputs, labels, generator)
        # Per sub-pixel outputs draw colour c after colours < c are known; a mixture draws the whole pixel.
        colour_steps = [slice(c, c + 1) for c in range(self.data.channels)] if self.per_subpixel else [slice(None)]
        for i in track(range(first_row, height), desc, unit="row"):
            for j in range(width):
                for colours in colour_steps:
                    params = session.params(i, j)
                    drawn = self.likelihood.sample(params, generator)[:, colours, 0, 0]
                    images[:, colours, i, j] = drawn
                    inputs[:, colours, i, j] = self.network_input(drawn)
        return images

    def sampling_session(self, inputs: Tensor, labels: Optional[Tensor],
                         generator: Optional[torch.Generator]) -> SamplingSession:
        """What generate() asks for each pixel's parameters: the network's session (a model that draws more than
        pixels, such as MADE's choice of mask per image, draws it here)."""
        return self.network.session(inputs, self.network.embed_labels(labels))

    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        d = self.data
        images = torch.zeros(n, d.channels, d.height, d.width, dtype=torch.long, device=self.device)
        images = self.generate(images, 0, labels, generator)
        return images.float() / (d.levels - 1)

    @torch.no_grad()
    def complete(self, batch: Batch, generator: Optional[torch.Generator] = None) -> Tensor:
        """Keep the top half of each image and sample the bottom half -> floats in [0, 1], (B, C, H, W)."""
        images = batch.x.long().clone()
        labels = (batch.y if batch.y is not None else self.default_labels(len(batch))) if self.conditional else None
        images = self.generate(images, self.data.height // 2, labels, generator,
                               desc="complete")
        return images.float() / (self.data.levels - 1)

    @torch.no_grad()
    def visualize(self, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        grids = super().visualize(batch, generator)
        shown = min(8, len(batch))
        x = batch.x[:shown]
        y = None if batch.y is None else batch.y[:shown]
        draws = 2  # completions per image
        completions = self.complete(
            Batch(x.repeat(draws, 1, 1, 1), None if y is None else y.repeat(draws)), generator
        ).view(draws, shown, *x.shape[1:])
        originals = x.float() / (self.data.levels - 1)
        top_half = originals.clone()
        top_half[:, :, self.data.height // 2 :] = 0.5
        # Rows: originals, what the model is given, then its completions.
        grids["completions"] = torch.cat([originals[None], top_half[None], completions])
        return grids
