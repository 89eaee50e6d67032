"""Exact checks of the autoregressive family (PixelCNN, Gated PixelCNN, PixelRNN's two layers, MADE, the pixel
Transformer): causality (exhaustively, by full Jacobians), the receptive fields (the blind spot, the Row
LSTM's triangle, full cover), normalisation over every image, the samplers' shortcuts, the uniform-output
baseline, and config errors."""

from __future__ import annotations

import itertools
import math
from unittest import mock

import pytest
import torch

from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.distributions import Bernoulli, Categorical, DiscretizedLogisticMixture
from gentrain.config import problems
from gentrain.errors import ConfigError
from gentrain.models.autoregressive import AutoregressiveNetwork, PixelOutput, SamplingSession
from gentrain.models.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from gentrain.models.made import MADE, MADEConfig
from gentrain.models.pixel_transformer import PixelTransformer, PixelTransformerConfig
from gentrain.models.pixelcnn import PixelCNN, PixelCNNConfig
from gentrain.models.pixelrnn import PixelRNN, PixelRNNConfig
from gentrain.models.schemas.autoregressive import RecurrentLayer
from gentrain.nn import colour_groups

CONV = dict(hidden_channels=24, num_layers=4, first_kernel_size=3, kernel_size=3, head_channels=24)
RNN = dict(hidden_channels=8, num_layers=2, first_kernel_size=3, kernel_size=3, head_channels=24)
VARIANTS = {  # name: (model, config class, its small test settings)
    "pixelcnn": (PixelCNN, PixelCNNConfig, CONV),
    "gated_pixelcnn": (GatedPixelCNN, GatedPixelCNNConfig, CONV),
    "row_lstm": (PixelRNN, PixelRNNConfig, RNN | {"layer": RecurrentLayer.row_lstm}),
    "diagonal_bilstm": (PixelRNN, PixelRNNConfig, RNN | {"layer": RecurrentLayer.diagonal_bilstm}),
    "made": (MADE, MADEConfig, dict(hidden=[60, 60], num_masks=3, direct_connections=True)),
    "pixel_transformer": (PixelTransformer, PixelTransformerConfig,
                          dict(hidden_channels=16, num_layers=2, num_heads=2, head_channels=24)),
    "multi_query_transformer": (PixelTransformer, PixelTransformerConfig,
                                dict(hidden_channels=16, num_layers=2, num_heads=2, key_value_heads=1,
                                     head_channels=24)),
}
CONVOLUTIONAL = ["pixelcnn", "gated_pixelcnn"]
SIZE = 5  # exhaustive checks on 5x5 images


def build(variant: str, data: DataInfo, **options):
    """A small model of the variant in double precision; options the variant does not have are ignored."""
    model_class, config_class, defaults = VARIANTS[variant]
    options = {key: value for key, value in (defaults | options).items() if key in config_class.__dataclass_fields__}
    torch.manual_seed(0)
    return model_class(config_class(**options), data).double().eval()


def output_layer(model) -> torch.nn.Module:
    network = model.network
    return network.output if isinstance(model, MADE) else network.head[-1]


def dependence(model, images: int = 6) -> torch.Tensor:
    """Boolean (P, H, W, C, H, W): does output parameter p at (i, j) depend on input (c, a, b)?

    The full Jacobian of the network, summed in absolute value over several random images so that a
    ReLU that happens to be off at one input does not hide a connection. Masked weights give exact zeros.
    """
    d = model.data
    x = torch.rand(images, d.channels, d.height, d.width, dtype=torch.double) * 2 - 1
    labels = torch.arange(images) % d.num_classes if model.conditional else None

    def outputs(image, label):
        class_bias = model.network.embed_labels(None if labels is None else label[None])
        return model.network(image[None], class_bias)[0]

    label_ids = torch.zeros(images, dtype=torch.long) if labels is None else labels
    if not isinstance(model, PixelTransformer):
        jacobians = torch.func.vmap(torch.func.jacfwd(outputs))(x, label_ids)  # (N, P, H, W, C, H, W)
        return jacobians.abs().sum(0) > 0
    # Fused attention has no forward-mode derivatives: one backward pass per output, summed over the images
    # (each image's gradient lands in its own slot, the images being independent).
    x.requires_grad_(True)
    params = model.network(x, model.network.embed_labels(labels))  # (N, P, H, W)
    out = params.flatten(1)
    rows = [torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)[0].abs().sum(0)
            for k in range(out.shape[1])]
    return (torch.stack(rows) > 0).view(*params.shape[1:], *x.shape[1:])


def allowed_inputs(model, num_params: int) -> torch.Tensor:
    """What raster order with R -> G -> B inside a pixel allows: earlier pixels, and of the current pixel
    the colours before the output's (only for outputs per sub-pixel; a mixture sees none of it)."""
    d = model.data
    h = w = SIZE
    pos = torch.arange(h * w).view(h, w)
    earlier = pos.view(h, w, 1, 1) > pos.view(1, 1, h, w)  # (i, j, a, b)
    same = pos.view(h, w, 1, 1) == pos.view(1, 1, h, w)
    out_colour = colour_groups(num_params, d.channels if model.per_subpixel else 1)
    in_colour = torch.arange(d.channels)
    colour_ok = in_colour.view(1, -1) < out_colour.view(-1, 1)  # (P, C)
    if not model.per_subpixel:
        colour_ok = torch.zeros_like(colour_ok)
    return earlier[None, :, :, None] | (same[None, :, :, None] & colour_ok[:, None, None, :, None, None])


CASES = [
    # (variant, channels, levels, output): RGB with a per-sub-pixel softmax and with a whole-pixel mixture,
    # grey binarized with a Bernoulli output. 4 levels stand in for 256: the masks do not depend on it.
    (variant, channels, levels, output)
    for variant in VARIANTS
    for channels, levels, output in [(3, 4, PixelOutput.softmax), (3, 256, PixelOutput.logistic_mixture),
                                     (1, 2, PixelOutput.bernoulli)]
]


@pytest.mark.parametrize("variant,channels,levels,output,conditional", [
    *[case + (False,) for case in CASES],
    *[(variant, 3, 4, PixelOutput.softmax, True) for variant in VARIANTS],
])
def test_outputs_depend_only_on_earlier_subpixels(variant, channels, levels, output, conditional):
    model = build(variant, DataInfo(channels, SIZE, SIZE, levels, 3), output=output, num_mixtures=2,
                  conditional=conditional)
    for mask in range(model.network.num_masks if variant == "made" else 1):  # every one of MADE's masks
        if variant == "made":
            model.network.active_mask = mask
        check_ordering(model, variant, channels)


def check_ordering(model, variant: str, channels: int) -> None:
    seen = dependence(model)
    allowed = allowed_inputs(model, seen.shape[0])
    leaks = seen & ~allowed
    assert not leaks.any(), (f"{int(leaks.sum())} output/input pairs break the ordering, "
                             f"e.g. {leaks.nonzero()[0].tolist()}")
    # The receptive field of a colour at a pixel: what any of its parameters reads (one parameter alone may
    # miss a connection where a ReLU of the head happens to be off for all the random images).
    colour = colour_groups(seen.shape[0], channels if model.per_subpixel else 1)
    field = torch.stack([seen[colour == c].any(0) for c in range(int(colour.max()) + 1)])
    if model.per_subpixel and channels == 3 and variant != "made":  # MADE's random degrees may skip a unit
        # The colour order is used, not just allowed: at every pixel G reads R, B reads R and G of it.
        pixels = [(i, j) for i in range(SIZE) for j in range(SIZE)]
        same_pixel = torch.stack([field[:, i, j, :, i, j] for i, j in pixels], dim=1)  # (colour, pixel, C)
        assert same_pixel[1].all(0).tolist() == [True, False, False]
        assert same_pixel[2].all(0).tolist() == [True, True, False]
    if variant in ("gated_pixelcnn", "diagonal_bilstm", "pixel_transformer", "multi_query_transformer"):
        # No blind spot: every output position sees every sub-pixel the ordering allows.
        first_of_colour = torch.stack([(colour == c).nonzero()[0, 0] for c in range(len(field))])
        missing = allowed[first_of_colour] & ~field
        assert not missing.any(), f"{variant}'s receptive field misses {missing.nonzero()[0].tolist()}"


def test_the_row_lstm_sees_its_triangle():
    """In the row d above a pixel, the Row LSTM sees up to d - 1 + first_kernel_size // 2 columns to its right
    (the first layer's reach, widened by one column per row of state-to-state convolutions); in its own row,
    first_kernel_size // 2 + layers * (kernel_size // 2) columns to its left. Exactly: one further is
    unseen."""
    height, width, layers = 5, 9, 2
    model = build("row_lstm", DataInfo(1, height, width, 2, None), output=PixelOutput.bernoulli, num_layers=layers,
                  first_kernel_size=5, kernel_size=3)
    seen = dependence(model)[0, :, :, 0]  # (i, j, a, b)
    reach, left = 5 // 2, 5 // 2 + layers * (3 // 2)
    for i, j in itertools.product(range(height), range(width)):
        if j - left - 1 >= 0:
            assert seen[i, j, i, j - left] and not seen[i, j, i, j - left - 1], (i, j)
        for a in range(i):
            last = j + (i - a) - 1 + reach
            columns = seen[i, j, a].nonzero().flatten().tolist()
            assert max(columns) == min(last, width - 1), (i, j, a, columns)


def test_plain_pixelcnn_has_a_blind_spot_above_right():
    model = build("pixelcnn", DataInfo(1, SIZE, SIZE, 2, None), output=PixelOutput.bernoulli, num_layers=4)
    seen = dependence(model)[0, :, :, 0]  # (i, j, a, b) of the single Bernoulli logit
    missing = allowed_inputs(model, 1)[0, :, :, 0] & ~seen
    assert missing.any(), "expected the stacked masked 3x3 kernels to miss some earlier pixels"
    for i, j, a, b in missing.nonzero().tolist():
        assert a < i and b > j, f"pixel ({a},{b}) missing from ({i},{j}) is not above-right of it"


@pytest.mark.parametrize("variant", CONVOLUTIONAL)
def test_reach_is_exact_and_the_samplers_crop_changes_nothing(variant):
    model = build(variant, DataInfo(3, 14, 13, 4, None), output=PixelOutput.softmax, num_layers=2)
    x = torch.rand(2, 3, 14, 13, dtype=torch.double) * 2 - 1
    full = model.network.features(x, None)
    rows_above, columns_aside = model.network.reach
    for i in range(14):
        for j in range(13):
            top, left = max(0, i - rows_above), max(0, j - columns_aside)
            window = x[:, :, top : i + 1, left : j + columns_aside + 1]
            cropped = model.network.features(window, None)[:, :, -1, j - left]
            torch.testing.assert_close(cropped, full[:, :, i, j], rtol=0, atol=1e-12)
    # and the reach is no larger than needed: the centre of the bottom row sees that far up and aside
    x_req = x.clone().requires_grad_(True)
    model.network.features(x_req, None)[:, :, -1, 6].sum().backward()
    seen = x_req.grad.abs().sum((0, 1)) > 0  # (H, W)
    rows, cols = seen.nonzero().unbind(1)
    assert 13 - int(rows.min()) == rows_above
    assert 6 - int(cols.min()) == columns_aside == int(cols.max()) - 6


@pytest.mark.parametrize("variant,channels,output", [
    *[(variant, 3, PixelOutput.softmax) for variant in VARIANTS], ("gated_pixelcnn", 1, PixelOutput.softmax),
])
def test_sampler_draws_each_subpixel_from_its_conditional(variant, channels, output):
    """With the draw replaced by the mode, sampling must produce x with x_k = argmax p(x_k | x_<k) for
    every sub-pixel, which one teacher-forced pass over the result checks exactly."""
    levels = 4
    model = build(variant, DataInfo(channels, SIZE, SIZE, levels, None), output=output, num_masks=1).float()

    def mode(params, generator=None):
        b, _, h, w = params.shape
        return params.view(b, channels, levels, h, w).argmax(2)

    model.likelihood.sample = mode
    images = (model.sample(3) * (levels - 1)).round().long()
    with torch.no_grad():
        params = model.network(model.network_input(images))
    torch.testing.assert_close(mode(params), images, rtol=0, atol=0)


@pytest.mark.parametrize("likelihood", [Categorical(5, 3), DiscretizedLogisticMixture(5, 3, 3), Bernoulli(2, 3)])
def test_output_distributions_sum_to_one_over_every_rgb_value(likelihood):
    """The outputs the models use are exact distributions over whole pixels, colour coupling included."""
    values = torch.tensor(list(itertools.product(range(likelihood.levels), repeat=3)))  # every (R, G, B)
    x = values.view(-1, 3, 1, 1)
    torch.manual_seed(0)
    params = (2 * torch.randn(1, likelihood.num_params, 1, 1)).expand(len(values), -1, -1, -1)
    total = torch.logsumexp(likelihood.log_prob(params, x), dim=0)
    torch.testing.assert_close(total, torch.tensor(0.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_uniform_softmax_scores_exactly_8_bits_per_dim(variant):
    model = build(variant, DataInfo(3, SIZE, SIZE, 256, None), output=PixelOutput.softmax).float()
    last = output_layer(model)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    if isinstance(model, MADE):  # its direct connections feed the output too
        torch.nn.init.zeros_(model.network.direct.weight)
    x = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    out = model.evaluate(Batch(x, None))
    torch.testing.assert_close(out["bits_per_dim"], torch.full((4,), 8.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(out["nll_nats"], torch.full((4,), 3 * SIZE * SIZE * math.log(256)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output", [PixelOutput.softmax, PixelOutput.logistic_mixture])
def test_samples_and_completions_are_images_of_the_data_levels(variant, output):
    model = build(variant, DataInfo(3, 6, 4, 256, 10), output=output, conditional=True).float()
    generator = torch.Generator().manual_seed(0)
    samples = model.sample(3, labels=torch.tensor([0, 1, 2]), generator=generator)
    assert samples.shape == (3, 3, 6, 4)
    assert samples.min() >= 0 and samples.max() <= 1
    torch.testing.assert_close(samples * 255, (samples * 255).round())

    x = torch.randint(0, 256, (4, 3, 6, 4), dtype=torch.uint8)
    batch = Batch(x, torch.tensor([3, 1, 4, 1]))
    completed = model.complete(batch, generator)
    assert completed.shape == (4, 3, 6, 4)
    torch.testing.assert_close(completed[:, :, :3], x[:, :, :3].float() / 255)  # the given top half is kept
    assert not torch.equal(completed[:, :, 3:], x[:, :, 3:].float() / 255)  # the bottom half is drawn

    grids = model.visualize(batch, generator)
    assert grids["samples"].shape == (4, 3, 6, 4)
    assert grids["completions"].shape == (4, 4, 3, 6, 4)  # originals, given half, two completions


def test_conditional_samples_depend_on_the_label():
    model = build("gated_pixelcnn", DataInfo(1, 4, 4, 256, 10), output=PixelOutput.softmax, conditional=True).float()
    with torch.no_grad():
        model.network.class_embedding.weight.normal_(0, 5.0)  # make the classes differ strongly
    draws = [model.sample(8, labels=torch.full((8,), k), generator=torch.Generator().manual_seed(1)) for k in (0, 1)]
    assert not torch.equal(draws[0], draws[1])


def test_config_errors_are_explained():
    rgb = DataInfo(3, 32, 32, 256, 10)
    with pytest.raises(ConfigError, match="bernoulli needs binarized data"):
        PixelCNN(PixelCNNConfig(output=PixelOutput.bernoulli), rgb)
    with pytest.raises(ConfigError, match="needs class labels"):
        GatedPixelCNN(GatedPixelCNNConfig(conditional=True), DataInfo(3, 32, 32, 256, None))
    assert next(problems(PixelCNNConfig(kernel_size=4), "model.")).startswith(
        "model.kernel_size must be an odd number between 3 and 63, got 4")
    with pytest.raises(ConfigError, match="colour groups"):
        PixelCNN(PixelCNNConfig(hidden_channels=4), rgb)
    # auto picks the exact discrete output for the data
    assert type(PixelCNN(PixelCNNConfig(), DataInfo(1, 28, 28, 2, 10)).likelihood).__name__ == "Bernoulli"
    assert type(PixelCNN(PixelCNNConfig(), rgb).likelihood).__name__ == "Categorical"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels,output,conditional", [
    (3, PixelOutput.softmax, True), (1, PixelOutput.softmax, False), (3, PixelOutput.logistic_mixture, False),
])
def test_the_caching_sampler_uses_the_whole_networks_parameters(variant, channels, output, conditional):
    """The sampling session computes each layer at the current pixel only, from kept maps: the parameters it
    gives at every step equal the whole network's on the finished images (for the colours drawn at that step),
    and with the same seed it draws the same images as the sampler that runs the whole network every step."""
    levels, size = 6, 7
    model = build(variant, DataInfo(channels, size, size, levels, 3 if conditional else None), output=output,
                  conditional=conditional, num_layers=3, first_kernel_size=5, num_masks=1).float()
    labels = torch.tensor([0, 1, 2, 1]) if conditional else None
    per_subpixel = output is not PixelOutput.logistic_mixture
    groups = colour_groups(model.likelihood.num_params, channels if per_subpixel else 1)
    images = torch.zeros(4, channels, size, size, dtype=torch.long)
    inputs = model.network_input(images)
    class_bias = model.network.embed_labels(labels)
    session = model.sampling_session(inputs, labels, None)
    assert type(session) is not SamplingSession  # each variant has a faster one than the whole network
    used = torch.zeros(4, model.likelihood.num_params, size, size)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, j in itertools.product(range(size), range(size)):
            for colour in range(channels) if per_subpixel else [None]:
                params = session.params(i, j)
                chosen = groups == colour if per_subpixel else groups >= 0
                used[:, chosen, i, j] = params[:, chosen, 0, 0]
                drawn = model.likelihood.sample(params, generator)[:, :, 0, 0]
                at = slice(colour, colour + 1) if per_subpixel else slice(None)
                images[:, at, i, j] = drawn[:, at]
                inputs[:, at, i, j] = model.network_input(drawn[:, at])
        whole = model.network(model.network_input(images), class_bias)
    torch.testing.assert_close(used, whole, rtol=0, atol=1e-5)

    fast = model.sample(4, labels=labels, generator=torch.Generator().manual_seed(1))
    def naive(self, inputs, labels, generator):  # the whole network at every step
        return SamplingSession(self.network, inputs, self.network.embed_labels(labels))

    with mock.patch.object(type(model), "sampling_session", naive), \
            mock.patch.object(type(model.network), "params_at", AutoregressiveNetwork.params_at):
        slow = model.sample(4, labels=labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("variant,channels,output", [
    *[(variant, 1, PixelOutput.bernoulli) for variant in VARIANTS],
    ("row_lstm", 3, PixelOutput.bernoulli), ("diagonal_bilstm", 3, PixelOutput.bernoulli),
    ("made", 3, PixelOutput.bernoulli),
    ("diagonal_bilstm", 1, PixelOutput.softmax), ("made", 1, PixelOutput.logistic_mixture),
    ("pixel_transformer", 3, PixelOutput.bernoulli), ("pixel_transformer", 1, PixelOutput.softmax),
    ("pixel_transformer", 1, PixelOutput.logistic_mixture),
])
def test_probabilities_of_every_possible_image_sum_to_one(variant, channels, output):
    """Normalisation, exhaustively: on 2x2 images every one of the levels ** (C * 4) images is scored, and the
    probabilities add up to 1 (for MADE's ensemble of masks too)."""
    levels = 3 if output is PixelOutput.softmax else 2 if output is PixelOutput.bernoulli else 4
    model = build(variant, DataInfo(channels, 2, 2, levels, None), output=output, num_mixtures=2)
    images = torch.tensor(list(itertools.product(range(levels), repeat=channels * 4))).view(-1, channels, 2, 2)
    with torch.no_grad():
        nll = model.float().evaluate(Batch(images, None))["nll_nats"]
    torch.testing.assert_close(torch.logsumexp(-nll.double(), 0), torch.tensor(0.0, dtype=torch.double),
                               rtol=0, atol=1e-5)


def test_made_ensemble_is_the_mixture_of_its_masks_and_sampling_uses_each_images_mask():
    model = build("made", DataInfo(3, 3, 3, 4, None), output=PixelOutput.softmax, num_masks=3).float()
    network = model.network
    masks = [network.masks(m) for m in range(3)]
    assert not torch.equal(masks[0][0], masks[1][0])  # the masks differ
    x = torch.randint(0, 4, (5, 3, 3, 3))
    per_mask = []
    for m in range(3):
        network.active_mask = m
        per_mask.append(-model.nll_nats(Batch(x, None)))
    network.active_mask = 0
    expected = -(torch.logsumexp(torch.stack(per_mask), 0) - math.log(3))
    torch.testing.assert_close(model.evaluate(Batch(x, None))["nll_nats"], expected, rtol=1e-6, atol=1e-5)
    # training cycles through the masks, one per step
    model.loss(Batch(x, None), step=7)
    assert network.active_mask == 7 % 3
    # the sampling session answers each image with its own mask's parameters
    from gentrain.models.made import MADESession
    chosen = torch.tensor([2, 0, 1, 0, 2])
    inputs = model.network_input(x)
    session = MADESession(network, inputs, None, chosen)
    with torch.no_grad():
        for i, j in itertools.product(range(3), range(3)):
            for image, m in enumerate(chosen.tolist()):
                network.active_mask = m
                whole = network(inputs[image : image + 1])[:, :, i, j]
                torch.testing.assert_close(session.params(i, j)[image, :, 0, 0], whole[0], rtol=0, atol=1e-5)
