"""MADE (Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", 2015).

A fully connected network over the flattened sub-pixels whose weights are masked so that the output for a
sub-pixel reads only the sub-pixels before it: raster order, R -> G -> B inside a pixel (for a logistic mixture
over whole pixels, the pixels before it). Every input and output unit has a degree, its position in that order
(1..D); a hidden unit gets a degree drawn in [the previous layer's smallest, D - 1] and reads the units of the
layer below whose degree is at most its own; an output reads the hidden units of a strictly smaller degree.
With model.direct_connections, an output also reads every input of a strictly smaller degree through a masked
linear layer (the paper's code, direct_input_connect="Output", as in its MNIST results).

With model.num_masks = M > 1 (the paper's connectivity-agnostic training) there are M draws of the hidden
degrees: training cycles through them, one per step, and evaluation scores the uniform mixture of the M
models, log p(x) = logsumexp_m log p_m(x) - log M, an exact likelihood (the paper's ensemble average). Sampling
draws a mask per image, then the image from it. The input order stays the raster order the shared sampler uses
(models/autoregressive.py).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.metrics import bits_per_dim
from gentrain.models.autoregressive import AutoregressiveModel, AutoregressiveNetwork, SamplingSession
from gentrain.models.base import LossOutput
from gentrain.models.schemas.autoregressive import MADEConfig, PixelOutput
from gentrain.nn import colour_groups


def unit_degrees(groups: Tensor, height: int, width: int, colours: int) -> Tensor:
    """The degree of every unit of a channel-major map (K, H, W) whose channels belong to colour `groups` (K,):
    pixel q = i * W + j, colour group g -> q * colours + g + 1."""
    pixels = torch.arange(height * width).view(1, height, width)
    return (pixels * colours + groups.view(-1, 1, 1) + 1).flatten()


def draw_hidden_degrees(sizes: list[int], max_degree: int, num_masks: int, seed: int) -> Tensor:
    """(num_masks, sum(sizes)): each mask's hidden degrees, layer after layer, each in [the smallest degree of
    the layer below, max_degree - 1] (degree 0 only when there is nothing to read: a one-unit input)."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(num_masks):
        low, layers = 1, []
        for size in sizes:
            low = min(low, max_degree - 1)
            layers.append(torch.randint(low, max(max_degree, low + 1), (size,), generator=generator))
            low = int(layers[-1].min())
        masks.append(torch.cat(layers))
    return torch.stack(masks)


class MADENetwork(AutoregressiveNetwork):
    def __init__(self, cfg: MADEConfig, data: DataInfo, colours: int, num_params: int, num_classes: int):
        super().__init__(num_classes, cfg.hidden[0])
        self.sizes, self.shape = list(cfg.hidden), (num_params, data.height, data.width)
        inputs = data.channels * data.height * data.width
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([inputs, *self.sizes[:-1]], self.sizes))
        self.output = nn.Linear(self.sizes[-1], num_params * data.height * data.width)
        self.direct = nn.Linear(inputs, num_params * data.height * data.width, bias=False) \
            if cfg.direct_connections else None
        # Degrees are drawn on the CPU (the same masks for a seed on every machine), then kept where the weights are.
        with torch.device("cpu"):
            input_groups = torch.arange(data.channels) * colours // data.channels
            degrees = {
                "input_degrees": unit_degrees(input_groups, data.height, data.width, colours),
                "output_degrees": unit_degrees(colour_groups(num_params, colours), data.height, data.width, colours),
                "hidden_degrees": draw_hidden_degrees(self.sizes, data.height * data.width * colours, cfg.num_masks,
                                                      cfg.mask_seed),
            }
        for name, value in degrees.items():  # hidden_degrees is saved: a checkpoint carries its connectivity
            self.register_buffer(name, value.to(self.output.weight.device), persistent=name == "hidden_degrees")
        self.active_mask = 0  # the mask forward() uses
        self._cached: tuple = (None, None)
        self._direct_cached: tuple = (None, None)

    @property
    def num_masks(self) -> int:
        return len(self.hidden_degrees)

    def masks(self, index: int) -> list[Tensor]:
        """The 0/1 weight masks of mask `index`, one per layer (the output layer's last)."""
        key = (index, self.output.weight.device, self.output.weight.dtype, self.hidden_degrees.data_ptr())
        if self._cached[0] != key:
            degrees = [self.input_degrees, *self.hidden_degrees[index].split(self.sizes)]
            masks = [later[:, None] >= earlier[None, :] for earlier, later in zip(degrees[:-1], degrees[1:])]
            masks.append(self.output_degrees[:, None] > degrees[-1][None, :])
            self._cached = (key, [mask.to(self.output.weight.dtype) for mask in masks])
        return self._cached[1]

    def direct_mask(self) -> Tensor:
        """The direct connections' 0/1 mask: an output reads the inputs of a strictly smaller degree."""
        key = (self.direct.weight.device, self.direct.weight.dtype)
        if self._direct_cached[0] != key:
            mask = self.output_degrees[:, None] > self.input_degrees[None, :]
            self._direct_cached = (key, mask.to(self.direct.weight.dtype))
        return self._direct_cached[1]

    def last_hidden(self, x: Tensor, class_bias: Optional[Tensor], masks: list[Tensor]) -> Tensor:
        h = x.flatten(1)
        for index, (layer, mask) in enumerate(zip(self.hidden_layers, masks)):
            h = F.linear(h, layer.weight * mask, layer.bias)
            if index == 0 and class_bias is not None:
                h = h + class_bias
            h = torch.relu(h)
        return h

    def forward(self, x: Tensor, class_bias: Optional[Tensor] = None) -> Tensor:
        masks = self.masks(self.active_mask)
        h = self.last_hidden(x, class_bias, masks)
        out = F.linear(h, self.output.weight * masks[-1], self.output.bias)
        if self.direct is not None:
            out = out + F.linear(x.flatten(1), self.direct.weight * self.direct_mask())
        return out.view(-1, *self.shape)

    def pixel_params(self, x: Tensor, class_bias: Optional[Tensor], masks: list[Tensor], i: int, j: int) -> Tensor:
        """The parameters of pixel (i, j) alone, (B, P, 1, 1): only its rows of the output layer."""
        _, height, width = self.shape
        rows = torch.arange(self.shape[0], device=x.device) * height * width + i * width + j
        h = self.last_hidden(x, class_bias, masks)
        out = F.linear(h, self.output.weight[rows] * masks[-1][rows], self.output.bias[rows])
        if self.direct is not None:
            out = out + F.linear(x.flatten(1), self.direct.weight[rows] * self.direct_mask()[rows])
        return out[:, :, None, None]

    def params_at(self, x: Tensor, class_bias: Optional[Tensor], i: int, j: int) -> Tensor:
        return self.pixel_params(x, class_bias, self.masks(self.active_mask), i, j)


class MADESession(SamplingSession):
    """Each image is drawn from the mask chosen for it (`chosen`, (B,)); each step computes the hidden layers and
    the current pixel's output rows, for the images of each mask together."""

    def __init__(self, network: MADENetwork, inputs: Tensor, class_bias: Optional[Tensor], chosen: Tensor):
        super().__init__(network, inputs, class_bias)
        self.groups = [(network.masks(int(m)), (chosen == m).nonzero().squeeze(1)) for m in chosen.unique()]

    def params(self, i: int, j: int) -> Tensor:
        network = self.network
        if len(self.groups) == 1:
            return network.pixel_params(self.inputs, self.class_bias, self.groups[0][0], i, j)
        out = self.inputs.new_empty(len(self.inputs), network.shape[0], 1, 1)
        for masks, images in self.groups:
            bias = None if self.class_bias is None else self.class_bias[images]
            out[images] = network.pixel_params(self.inputs[images], bias, masks, i, j)
        return out


class MADE(AutoregressiveModel, config=MADEConfig):
    """MADE: a masked MLP autoencoder, with one or several connectivity masks averaged."""

    # A softmax per sub-pixel would make the output layer 256 x C x H x W wide (100M weights on MNIST).
    auto_output = PixelOutput.logistic_mixture

    def build_network(self, cfg: MADEConfig, data: DataInfo, colours: int, num_classes: int) -> MADENetwork:
        return MADENetwork(cfg, data, colours, self.likelihood.num_params, num_classes)

    def loss(self, batch: Batch, step: int) -> LossOutput:
        self.network.active_mask = step % self.network.num_masks
        return super().loss(batch, step)

    def ensemble_nll_nats(self, batch: Batch) -> Tensor:
        """-log of the mixture of the masks' probabilities, (B,)."""
        network, before = self.network, self.network.active_mask
        log_probs = []
        try:
            for index in range(network.num_masks):
                network.active_mask = index
                log_probs.append(-self.nll_nats(batch))
        finally:
            network.active_mask = before
        return -(torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(network.num_masks))

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        nll = self.ensemble_nll_nats(batch)
        return {"bits_per_dim": bits_per_dim(nll, self.data.num_dims), "nll_nats": nll}

    def metric_notes(self) -> list[str]:
        notes = super().metric_notes()
        if self.network.num_masks > 1:
            notes.append(f"evaluation scores the uniform mixture of the {self.network.num_masks} masks' models, "
                         f"log p(x) = logsumexp_m log p_m(x) - log M (exact); train/* use the step's one mask")
        return notes

    def sampling_session(self, inputs: Tensor, labels: Optional[Tensor],
                         generator: Optional[torch.Generator]) -> SamplingSession:
        count = self.network.num_masks
        device = generator.device if generator is not None else inputs.device
        chosen = torch.randint(count, (len(inputs),), generator=generator, device=device).to(inputs.device) \
            if count > 1 else torch.zeros(len(inputs), dtype=torch.long, device=inputs.device)
        return MADESession(self.network, inputs, self.network.embed_labels(labels), chosen)
