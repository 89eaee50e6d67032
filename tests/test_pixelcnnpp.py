"""Exact checks of PixelCNN++ (models/pixelcnnpp.py): causality and full cover of every earlier pixel (by full
Jacobians), normalisation over every tiny image, the uniform-output baseline, the sampler that recomputes only
what can change against the whole network, and config errors."""

from __future__ import annotations

import itertools
import math
from unittest import mock

import pytest
import torch

from gentrain.config import problems
from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.models.autoregressive import AutoregressiveNetwork, PixelOutput, SamplingSession
from gentrain.models.pixelcnnpp import PixelCNNPP, PixelCNNPPConfig
from gentrain.nn.shifted import ShiftedConv2d, ShiftedConvTranspose2d
from test_autoregressive import dependence

SMALL = dict(num_filters=6, num_blocks=2, num_mixtures=2)


def build(data: DataInfo, **options) -> PixelCNNPP:
    torch.manual_seed(0)
    return PixelCNNPP(PixelCNNPPConfig(**(SMALL | options)), data).double().eval()


def earlier_pixels(height: int, width: int) -> torch.Tensor:
    """(H, W, H, W): is pixel (a, b) before pixel (i, j) in raster order?"""
    position = torch.arange(height * width).view(height, width)
    return position.view(height, width, 1, 1) > position.view(1, 1, height, width)


@pytest.mark.parametrize("channels,levels,output,conditional", [
    (3, 256, PixelOutput.logistic_mixture, False),
    (3, 256, PixelOutput.logistic_mixture, True),
    (1, 4, PixelOutput.softmax, False),
])
def test_every_output_sees_exactly_the_earlier_pixels(channels, levels, output, conditional):
    """No parameter of pixel (i, j) reads any colour of (i, j) or a later pixel (the mixture couples the
    colours inside the pixel), and the two streams leave no blind spot: every earlier pixel is read."""
    height, width = 8, 8
    model = build(DataInfo(channels, height, width, levels, 3), output=output, conditional=conditional)
    seen = dependence(model).any(0).any(2)  # (i, j, a, b): any parameter of (i, j) reads any colour of (a, b)
    allowed = earlier_pixels(height, width)
    leaks = seen & ~allowed
    assert not leaks.any(), f"outputs read their own or later pixels, e.g. {leaks.nonzero()[0].tolist()}"
    missing = allowed & ~seen
    assert not missing.any(), f"a blind spot: {missing.nonzero()[0].tolist()} (i, j, a, b) is not read"


def test_one_block_per_level_misses_the_far_right_of_the_row_above_on_odd_rows():
    """The check above can fail: on odd rows the row above reaches the output through the full-resolution
    u stream only, whose width grows by one column per convolution."""
    model = build(DataInfo(1, 8, 8, 4, None), output=PixelOutput.softmax, num_blocks=1)
    seen = dependence(model).any(0).any(2)
    missing = earlier_pixels(8, 8) & ~seen
    assert missing.any() and all(i % 2 == 1 for i, _, _, _ in missing.nonzero().tolist())


@pytest.mark.parametrize("right", [False, True])
def test_shifted_layers_read_what_their_docstrings_say(right):
    """Strided: output (p, q) reads input rows 2p - 1, 2p; transposed: output row r reads input row r // 2
    (down-right ones: column c // 2). The sampler's windows depend on it."""
    torch.manual_seed(0)
    down = ShiftedConv2d(2, 3, (2, 2) if right else (2, 3), right=right, stride=2).double()
    up = ShiftedConvTranspose2d(2, 3, right=right).double()
    x = torch.randn(1, 2, 8, 8, dtype=torch.double)
    def strided(p, q):
        return {2 * p - 1, 2 * p}, {2 * q - 1, 2 * q} if right else {2 * q - 1, 2 * q, 2 * q + 1}

    def transposed(r, c):
        return {r // 2}, {c // 2} if right else {q for q in range(8) if 2 * q - 1 <= c <= 2 * q + 1}

    for layer, out_size, reads in [(down, 4, strided), (up, 16, transposed)]:
        jacobian = torch.autograd.functional.jacobian(layer, x)[0].abs().sum((0, 3, 4))  # (H', W', H, W)
        assert jacobian.shape[:2] == (out_size, out_size)
        for p, q in itertools.product(range(out_size), repeat=2):
            rows, columns = reads(p, q)
            expected = torch.zeros_like(jacobian[p, q], dtype=torch.bool)
            for a, b in itertools.product(rows, columns):
                if 0 <= a < x.shape[-2] and 0 <= b < x.shape[-1]:
                    expected[a, b] = True
            assert torch.equal(jacobian[p, q] > 0, expected), (p, q)


@pytest.mark.parametrize("output,levels", [
    (PixelOutput.bernoulli, 2), (PixelOutput.softmax, 2), (PixelOutput.logistic_mixture, 2),
])
def test_probabilities_of_every_possible_image_sum_to_one(output, levels):
    """Normalisation, exhaustively: on 4x4 one-channel images (the smallest the three resolutions take) each
    of the 2 ** 16 images is scored, and the probabilities add up to 1."""
    model = build(DataInfo(1, 4, 4, levels, None), output=output, num_filters=4, num_blocks=1).float()
    images = torch.tensor(list(itertools.product(range(levels), repeat=16))).view(-1, 1, 4, 4)
    with torch.no_grad():
        nll = torch.cat([model.evaluate(Batch(chunk, None))["nll_nats"] for chunk in images.split(8192)])
    total = torch.logsumexp(-nll.double(), 0)
    torch.testing.assert_close(total, torch.tensor(0.0, dtype=torch.double), rtol=0, atol=1e-5)


def test_uniform_softmax_scores_exactly_8_bits_per_dim():
    model = build(DataInfo(1, 8, 8, 256, None), output=PixelOutput.softmax).float()
    last = model.network.head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = model.evaluate(Batch(x, None))
    torch.testing.assert_close(out["bits_per_dim"], torch.full((4,), 8.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(out["nll_nats"], torch.full((4,), 64 * math.log(256)), rtol=1e-6, atol=0)


def naive_session(self, inputs, labels, generator):  # the whole network at every step
    return SamplingSession(self.network, inputs, self.network.embed_labels(labels))


@pytest.mark.parametrize("channels,levels,output,conditional", [
    (3, 256, PixelOutput.logistic_mixture, True),
    (1, 6, PixelOutput.softmax, False),
    (1, 2, PixelOutput.bernoulli, False),
])
def test_the_sampler_gives_the_whole_networks_parameters_and_images(channels, levels, output, conditional):
    """At every step the session's parameters equal the whole network's on the finished images, and with the
    same seed it draws the same images, and the same completions, as the whole network at every step."""
    height, width = 8, 12
    data = DataInfo(channels, height, width, levels, 3)
    model = build(data, output=output, conditional=conditional).float()
    labels = torch.tensor([0, 1, 2, 1]) if conditional else None
    images = torch.zeros(4, channels, height, width, dtype=torch.long)
    inputs = model.network_input(images)
    session = model.sampling_session(inputs, labels, None)
    assert type(session) is not SamplingSession
    used = torch.zeros(4, model.likelihood.num_params, height, width)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, j in itertools.product(range(height), range(width)):
            params = session.params(i, j)
            used[:, :, i, j] = params[:, :, 0, 0]
            drawn = model.likelihood.sample(params, generator)[:, :, 0, 0]
            images[:, :, i, j] = drawn
            inputs[:, :, i, j] = model.network_input(drawn)
        whole = model.network(model.network_input(images), model.network.embed_labels(labels))
    torch.testing.assert_close(used, whole, rtol=0, atol=1e-5)

    def draw():
        samples = model.sample(4, labels=labels, generator=torch.Generator().manual_seed(1))
        given = Batch(images, labels)
        return samples, model.complete(given, torch.Generator().manual_seed(2))

    fast = draw()
    with mock.patch.object(type(model), "sampling_session", naive_session), \
            mock.patch.object(type(model.network), "params_at", AutoregressiveNetwork.params_at):
        slow = draw()
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert torch.equal(fast[1][:, :, : height // 2], images[:, :, : height // 2].float() / (levels - 1))


def test_training_mode_uses_dropout_and_evaluation_does_not():
    model = build(DataInfo(1, 8, 8, 256, None), dropout=0.5).float()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.network(x), model.network(x))
        model.train()
        assert not torch.equal(model.network(x), model.network(x))


def test_config_errors_are_explained():
    rgb = DataInfo(3, 32, 32, 256, 10)
    with pytest.raises(ConfigError, match="one-channel images only.*model.output=logistic_mixture"):
        PixelCNNPP(PixelCNNPPConfig(output=PixelOutput.softmax), rgb)
    with pytest.raises(ConfigError, match="one-channel images only"):
        PixelCNNPP(PixelCNNPPConfig(), DataInfo(3, 32, 32, 2, 10))  # auto: a Bernoulli per sub-pixel
    with pytest.raises(ConfigError, match="multiples of 4, got 30x30"):
        PixelCNNPP(PixelCNNPPConfig(), DataInfo(1, 30, 30, 256, 10))
    with pytest.raises(ConfigError, match="needs class labels"):
        PixelCNNPP(PixelCNNPPConfig(conditional=True), DataInfo(3, 32, 32, 256, None))
    assert next(problems(PixelCNNPPConfig(dropout=1.0), "model.")).startswith("model.dropout")
    assert next(problems(PixelCNNPPConfig(num_filters=0), "model.")).startswith("model.num_filters")
    # auto picks the paper's mixture on 8-bit data and a Bernoulli on binarized one-channel data
    mixture = PixelCNNPP(PixelCNNPPConfig(**SMALL), rgb)
    assert type(mixture.likelihood).__name__ == "DiscretizedLogisticMixture"
    binarized = PixelCNNPP(PixelCNNPPConfig(**SMALL), DataInfo(1, 28, 28, 2, 10))
    assert type(binarized.likelihood).__name__ == "Bernoulli"
