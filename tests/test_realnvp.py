"""Exact checks of RealNVP / NICE: invertibility, the summed log-det against autograd's full Jacobian
(with and without the preprocessing), the bits/dim accounting, and config errors."""

from __future__ import annotations

import math

import pytest
import torch

from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.config import problems
from gentrain.errors import ConfigError
from gentrain.metrics import dequantized_nll_nats
from gentrain.models.realnvp import CouplingType, RealNVP, RealNVPConfig
from gentrain.nn import ActNorm, Coupling, CouplingMask, LogitTransform, squeeze, unsqueeze


def build(data: DataInfo, coupling: CouplingType = CouplingType.affine, num_scales: int = 2) -> RealNVP:
    torch.manual_seed(0)
    model = RealNVP(RealNVPConfig(num_scales=num_scales, coupling=coupling, hidden_channels=8, residual_blocks=1,
                                  logit_alpha=0.05), data).double()
    # Give every layer a non-trivial function: ActNorm's data-dependent init on one training batch, then
    # random (instead of zero) last layers in the couplings, so that s and t are not zero.
    model.train()
    model(torch.rand(16, data.channels, data.height, data.width, dtype=torch.double))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Coupling):
                module.net.net[-1].weight.normal_(0, 0.05)
                module.net.net[-1].bias.normal_(0, 0.05)
    return model.eval()


CASES = [(DataInfo(1, 4, 4, 256, None), 2), (DataInfo(3, 4, 4, 256, None), 2), (DataInfo(2, 8, 8, 256, None), 3)]


@pytest.mark.parametrize("coupling", list(CouplingType))
@pytest.mark.parametrize("data,num_scales", CASES)
def test_inverse_of_forward_recovers_the_input(data, num_scales, coupling):
    model = build(data, coupling, num_scales).float()
    u = torch.rand(8, data.channels, data.height, data.width)
    z, _ = model(u)
    assert z.shape == (8, data.num_dims)
    torch.testing.assert_close(model.inverse(z), u, rtol=0, atol=1e-4)
    y = torch.randn(8, data.channels, data.height, data.width)  # and the flow alone, from the latent side
    torch.testing.assert_close(model.flow(model.flow.inverse(model.flow(y)[0]))[0], model.flow(y)[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("coupling", list(CouplingType))
@pytest.mark.parametrize("data,num_scales", CASES)
def test_log_det_equals_autograd_jacobian(data, num_scales, coupling):
    model = build(data, coupling, num_scales)
    shape = (data.channels, data.height, data.width)
    for with_preprocessing in (True, False):
        x = (torch.rand(1, *shape, dtype=torch.double) if with_preprocessing
             else torch.randn(1, *shape, dtype=torch.double))
        transform = model if with_preprocessing else model.flow
        _, log_det = transform(x)
        jacobian = torch.autograd.functional.jacobian(lambda v: transform(v.view(1, *shape))[0][0], x.flatten())
        sign, log_abs_det = torch.linalg.slogdet(jacobian)
        assert sign != 0
        torch.testing.assert_close(log_det[0], log_abs_det, rtol=0, atol=1e-8)
        if coupling is CouplingType.additive and not with_preprocessing:
            # NICE's couplings preserve volume: only the ActNorm scales remain
            actnorm = sum(m.log_scale.sum() * _spatial_size(model, m)
                          for m in model.modules() if isinstance(m, ActNorm))
            torch.testing.assert_close(log_det[0], actnorm.detach(), rtol=0, atol=1e-8)


def _spatial_size(model: RealNVP, actnorm: ActNorm) -> int:
    """H * W of the tensor an ActNorm sees, found by running the flow with a hook."""
    seen = {}

    def record(module, inputs, output) -> None:
        seen["hw"] = inputs[0].shape[2] * inputs[0].shape[3]

    handle = actnorm.register_forward_hook(record)
    d = model.data
    with torch.no_grad():
        model.flow(torch.zeros(1, d.channels, d.height, d.width, dtype=torch.double))
    handle.remove()
    return seen["hw"]


def test_layers_invert_and_keep_volume_where_they_should():
    x = torch.randn(2, 4, 6, 6, dtype=torch.double)
    assert torch.equal(unsqueeze(squeeze(x)), x)
    logit = LogitTransform(0.05)
    u = torch.rand(3, 5, dtype=torch.double)
    y, log_det = logit(u)
    torch.testing.assert_close(logit.inverse(y), u)
    s = 0.05 + 0.9 * u  # d logit(s)/du = 0.9 / (s (1 - s)), per dimension
    torch.testing.assert_close(log_det, torch.log(0.9 / (s * (1 - s))).sum(1))
    for mask in CouplingMask:
        layer = Coupling(4, mask, parity=1, width=8, blocks=1, affine=True).double().eval()
        torch.nn.init.normal_(layer.net.net[-1].weight, 0, 0.1)
        y, _ = layer(x)
        torch.testing.assert_close(layer.inverse(y), x)
        unchanged = y == x
        assert unchanged.float().mean() == 0.5, "a coupling must leave exactly half of the values as they are"


def test_actnorm_initializes_from_the_first_training_batch_only():
    norm = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1) + 2.0
    y, _ = norm(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3), rtol=0, atol=1e-4)
    before = norm.log_scale.detach().clone()
    norm(x * 10)
    assert torch.equal(norm.log_scale.detach(), before)
    assert bool(norm.state_dict()["initialized"])
    resumed = ActNorm(3)  # a resumed run does not initialise again
    resumed.load_state_dict(norm.state_dict())
    resumed(x * 10)
    assert torch.equal(resumed.log_scale.detach(), before)


def test_uniform_density_on_the_unit_cube_scores_exactly_8_bits_per_dim():
    """A model with density 1 on [0, 1]^D puts mass 1/256^D on every 8-bit image."""
    dims = 3 * 32 * 32
    nll = dequantized_nll_nats(torch.zeros(4, dtype=torch.float64), dims, 256)
    assert torch.equal(nll / (dims * math.log(2)), torch.full((4,), 8.0, dtype=torch.float64))


def test_bits_per_dim_includes_every_term():
    """evaluate() = -(log N(z) + flow log-det + logit log-det) + D ln 256, recomputed here by hand."""
    data = DataInfo(1, 4, 4, 256, None)
    model = build(data)
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    torch.manual_seed(3)
    out = model.evaluate(Batch(x, None))
    torch.manual_seed(3)
    u = (x.double() + torch.rand(x.shape)) / 256
    y, logit_log_det = model.logit(u)
    z, flow_log_det = model.flow(y)
    log_prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
    expected = -(log_prior + flow_log_det + logit_log_det) + 16 * math.log(256)
    torch.testing.assert_close(out["nll_nats"], expected)
    torch.testing.assert_close(out["bits_per_dim"], expected / (16 * math.log(2)))


def test_samples_at_a_temperature_are_images():
    model = build(DataInfo(3, 4, 4, 256, None)).float()
    generator = torch.Generator().manual_seed(0)
    cold = model.sample(6, generator=generator, temperature=0.0001)
    hot = model.sample(6, generator=generator, temperature=1.0)
    assert cold.shape == hot.shape == (6, 3, 4, 4)
    torch.testing.assert_close(hot * 255, (hot * 255).round())
    assert cold.std(0).max() < 1e-2 < hot.std(0).max()  # near T = 0 every draw is the mode image
    grids = model.visualize(Batch(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), None), generator)
    assert grids["samples"].shape == (4, 3, 4, 4) and grids["samples_by_temperature"].shape == (4, 8, 3, 4, 4)


def test_config_errors_are_explained():
    with pytest.raises(ConfigError, match="divisible by 4"):
        RealNVP(RealNVPConfig(num_scales=3), DataInfo(1, 28, 30, 256, None))
    with pytest.raises(ConfigError, match="leave at least 2 pixels"):
        RealNVP(RealNVPConfig(num_scales=4), DataInfo(3, 8, 8, 256, None))
    assert next(problems(RealNVPConfig(logit_alpha=0.5), "model.")) == \
        "model.logit_alpha must be > 0 and < 0.5, got 0.5"
