"""Exact checks of flow matching (gentrain/models/flow_matching.py): with the closed-form optimal velocity of
Gaussian data (tests/gaussian_flow.py) in place of the U-Net, the dequantized ODE bound is an upper bound on
the true discrete NLL, equal to its closed-form expectation; the training target is the one the optimal field
minimises; samples have the data's mean and covariance; guidance, label dropout, seeds; and a debug run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import compose_config, run_cli
from gaussian_flow import AnalyticVelocity, GaussianData
from gentrain.composition import build_model, to_config
from gentrain.config import problems
from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.metrics import bits_per_dim
from gentrain.models.flow_matching import TIME_SCALE, FlowMatching, FlowMatchingConfig, ODESolver

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = {"base_channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}


def build(data: DataInfo, gaussian: GaussianData | None = None, **options) -> FlowMatching:
    torch.manual_seed(0)
    model = FlowMatching(FlowMatchingConfig(**(TINY | options)), data).eval()
    if gaussian is not None:
        model.network = AnalyticVelocity(gaussian, TIME_SCALE)
    return model


def quantize(y: torch.Tensor, shape: tuple[int, ...], levels: int = 256) -> torch.Tensor:
    """Values in the model's range [-1, 1] -> the 8-bit images whose cells hold them."""
    return ((y + 1) / 2 * levels).floor().clamp(0, levels - 1).to(torch.uint8).view(-1, *shape)


def discrete_nll(gaussian: GaussianData, x: torch.Tensor) -> torch.Tensor:
    """-log P(x) of 8-bit images under an axis-aligned Gaussian in [-1, 1]: its mass on each pixel's cell."""
    lower = 2 * x.flatten(1).double() / 256 - 1
    normal = torch.distributions.Normal(gaussian.mu, gaussian.s)
    return -torch.log(normal.cdf(lower + 2 / 256) - normal.cdf(lower)).sum(1)


def expected_bound(gaussian: GaussianData, x: torch.Tensor) -> torch.Tensor:
    """The bound's expectation over the dequantization noise, in closed form: E[-log N(y; mu, s^2)] for y
    uniform on each cell [a, b], minus D ln 2 (y = 2u - 1), plus D ln 256."""
    a = 2 * x.flatten(1).double() / 256 - 1 - gaussian.mu
    b = a + 2 / 256
    mean_square = (b ** 3 - a ** 3) / (3 * (b - a))
    log_normal = -0.5 * (mean_square / gaussian.s ** 2 + torch.log(2 * math.pi * gaussian.s ** 2))
    return (-log_normal).sum(1) + x[0].numel() * math.log(128)


def test_the_ode_bound_is_above_the_true_discrete_nll_and_close_to_it():
    """Narrow Gaussians (a few 8-bit cells wide) make the dequantization gap visible: the estimated bound
    matches its closed-form expectation (every term: dequantization, the D ln 2 of the affine map and the
    8-bit offset), lies above the exact -log P(x), and within 0.02 bits/dim of it."""
    data = DataInfo(1, 2, 2, 256, None)
    g = torch.Generator().manual_seed(0)
    gaussian = GaussianData(torch.rand(4, generator=g, dtype=torch.float64) - 0.5,
                            0.015 + 0.015 * torch.rand(4, generator=g, dtype=torch.float64))
    model = build(data, gaussian)
    x = quantize(gaussian.sample(512, g), (1, 2, 2)).repeat(4, 1, 1, 1)  # four noise samples per image
    torch.manual_seed(1)
    bound, std_error, nfe = model.ode_nll(Batch(x, None))
    assert torch.equal(std_error, torch.zeros(len(x)))  # 4 dimensions: the exact divergence
    assert (nfe > 10).all()
    bound = bound.double()

    expected, true = expected_bound(gaussian, x), discrete_nll(gaussian, x)
    assert (expected >= true).all()  # Jensen, per image
    se = (bound - expected).std() / math.sqrt(len(x))
    assert abs(float((bound - expected).mean())) < 4 * se
    gap = bound - true
    assert gap.mean() > 4 * gap.std() / math.sqrt(len(x))  # above the true NLL, beyond the noise
    assert bits_per_dim(gap.mean(), 4) < 0.02


def test_hutchinson_bound_agrees_with_the_exact_one_within_its_standard_error():
    data = DataInfo(1, 2, 3, 256, None)
    gaussian = GaussianData.random(6, seed=1, scale=0.5)  # rotated: the probes' estimates vary
    x = quantize(gaussian.sample(16, torch.Generator().manual_seed(2)), (1, 2, 3))
    exact_model = build(data, gaussian, likelihood_solver=ODESolver.heun, likelihood_steps=40)
    probed = build(data, gaussian, likelihood_solver=ODESolver.heun, likelihood_steps=40,
                   exact_divergence_max_dims=5, probes=16)
    assert exact_model.divergence_probes is None and probed.divergence_probes == 16
    torch.manual_seed(3)  # the same dequantization noise for both
    exact, zero, _ = exact_model.ode_nll(Batch(x, None))
    torch.manual_seed(3)
    estimate, std_error, _ = probed.ode_nll(Batch(x, None))
    assert torch.equal(zero, torch.zeros(16)) and (std_error > 1e-3).all()
    assert ((estimate - exact) / std_error).abs().max() < 4
    out = probed.evaluate(Batch(x, None), final=True)
    metrics = probed.summarize({name: value.mean(0) for name, value in out.items()})
    assert metrics["bits_per_dim_probe_se"] == pytest.approx(
        float(bits_per_dim(std_error, 6).pow(2).mean().sqrt()), rel=0.5)  # another noise draw: same size
    assert {"bits_per_dim", "nll_nats", "ode_nfe", "fm_loss"} <= set(metrics)
    assert "bits_per_dim_probe_var" not in metrics


def test_the_training_target_is_what_the_optimal_field_minimises():
    """The flow-matching loss of the closed-form optimal velocity is below that of any shifted or scaled field
    (paired noise): the path, its target and the time convention agree."""
    data = DataInfo(1, 4, 4, 256, None)
    gaussian = GaussianData.random(16, seed=4, scale=0.25)  # inside [-1, 1]: quantizing clips nothing
    x = quantize(gaussian.sample(4096, torch.Generator().manual_seed(5)), (1, 4, 4))
    for sigma_min in (0.0, 0.1):
        gaussian.sigma_min = sigma_min
        model = build(data, gaussian, sigma_min=sigma_min)
        torch.manual_seed(6)
        best = model.fm_loss(Batch(x, None), None).mean()
        for wrong in (lambda v: v + 0.1, lambda v: 1.1 * v, lambda v: 0.9 * v):
            model.network.forward = lambda x_, t, labels=None, change=wrong: \
                change(gaussian.velocity(x_, t / TIME_SCALE))
            torch.manual_seed(6)
            assert model.fm_loss(Batch(x, None), None).mean() > best + 1e-3


@pytest.mark.parametrize("solver", list(ODESolver))
def test_samples_of_the_optimal_field_have_the_data_mean_and_covariance(solver):
    data = DataInfo(1, 1, 3, 256, None)
    gaussian = GaussianData.random(3, seed=7, scale=0.25)
    model = build(data, gaussian, solver=solver, steps=200 if solver is ODESolver.euler else 20)
    images = model.sample(4000, generator=torch.Generator().manual_seed(8))
    assert images.shape == (4000, 1, 1, 3)
    torch.testing.assert_close(images * 255, (images * 255).round())
    y = 2 * (images.flatten(1).double() * 255 + 0.5) / 256 - 1  # each cell's centre in [-1, 1]
    covariance = gaussian.covariance()
    assert ((y.mean(0) - gaussian.mu).abs() < 4 * covariance.diag().sqrt() / math.sqrt(4000)).all()
    torch.testing.assert_close(torch.cov(y.T), covariance, rtol=0, atol=8e-3)
    fixed = {ODESolver.euler: 200, ODESolver.heun: 40}
    nfe = model.last_sampling_nfe
    assert nfe == fixed.get(solver, nfe) and nfe > 10
    assert any(f"NFE {nfe:g} per image" in note for note in model.metric_notes())


def randomized(model: FlowMatching) -> FlowMatching:
    """The U-Net's residual branches and last layer start at zero (velocity 0 everywhere, blind to labels);
    give them weights so that outputs vary."""
    torch.manual_seed(9)
    with torch.no_grad():
        for parameter in model.network.parameters():
            if parameter.count_nonzero() == 0:
                parameter.normal_(0, 0.1)
    return model


def test_the_same_seed_gives_the_same_images():
    model = randomized(build(DataInfo(1, 8, 8, 256, None), steps=3))
    first, again, other = (model.sample(4, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert model.last_sampling_nfe == 6  # Heun: two evaluations per step


def test_guidance_mixes_the_labelled_and_unlabelled_velocity_and_labels_are_dropped_in_training():
    data = DataInfo(1, 8, 8, 256, 10)
    model = randomized(build(data, conditional=True, label_dropout=0.5))
    x, t, labels = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 4, 7])
    with torch.no_grad():
        v_label = model.network(x, TIME_SCALE * t, labels)
        v_none = model.network(x, TIME_SCALE * t, None)
        assert not torch.allclose(v_label, v_none)
        torch.testing.assert_close(model.velocity(x, t, labels), v_label)
        torch.testing.assert_close(model.velocity(x, t, labels, 3.0), v_none + 3 * (v_label - v_none),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.velocity(x, t, labels, 0.0), v_none, atol=1e-6, rtol=1e-6)
    seen = []
    forward = model.network.forward
    model.network.forward = lambda x_, t_, labels_=None: seen.append(labels_) or forward(x_, t_, labels_)
    model.loss(Batch(torch.zeros(2000, 1, 8, 8, dtype=torch.uint8), torch.full((2000,), 3)), 0)
    dropped = float((seen[0] == model.network.null_label).float().mean())
    assert abs(dropped - 0.5) < 0.05 and set(seen[0].tolist()) == {3, 10}


class LabelledField(torch.nn.Module):
    """A smooth velocity that depends on the label (label 10: none), in place of a conditional U-Net."""

    null_label = 10

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = torch.full(t.shape, self.null_label) if labels is None else labels
        rate = (1 + labels / 10) * torch.cos(t / TIME_SCALE)
        return -x * rate.view(-1, 1, 1, 1)


def test_a_conditional_model_solves_each_image_with_its_own_label():
    """The adaptive solver evaluates only the images still under way: each keeps its own label."""
    data = DataInfo(1, 8, 8, 256, 10)
    model = build(data, conditional=True, solver=ODESolver.adaptive, likelihood_solver=ODESolver.adaptive,
                  guidance_scale=2.0)
    model.network = LabelledField()
    labels = torch.tensor([0, 5, 9])
    together = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(0))
    alone = model.sample(1, labels=labels[1:2], generator=torch.Generator().manual_seed(0))
    first = model.sample(1, labels=labels[:1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(together[:1], first)
    assert together.shape == (3, 1, 8, 8) and not torch.equal(alone, first)  # the label matters
    x = (together * 255).to(torch.uint8)
    torch.manual_seed(1)
    nll, _, nfe = model.ode_nll(Batch(x, labels))
    torch.manual_seed(1)
    single, _, _ = model.ode_nll(Batch(x[:1], labels[:1]))
    torch.testing.assert_close(nll[:1], single, rtol=1e-5, atol=1e-3)
    assert torch.isfinite(nll).all() and (nfe > 1).all()


def test_config_errors_are_explained():
    with pytest.raises(ConfigError, match="model.conditional=true needs class labels"):
        FlowMatching(FlowMatchingConfig(**TINY, conditional=True), DataInfo(1, 8, 8, 256, None))
    assert list(problems(FlowMatchingConfig(guidance_scale=2.0), "model.")) == [
        "model.guidance_scale=2.0 needs model.conditional=true (classifier-free guidance mixes the "
        "class-conditional and the unconditional velocity)"]
    assert next(problems(FlowMatchingConfig(probes=1), "model.")).startswith("model.probes must be")
    assert next(problems(FlowMatchingConfig(sigma_min=1.0), "model.")).startswith("model.sigma_min must be")


@pytest.mark.parametrize("preset,params,data", [
    ("cpu_flow_matching_mnist", (1e6, 1.3e6), DataInfo(1, 28, 28, 256, 10)),
    ("cpu_flow_matching_cifar10", (1e6, 1.3e6), DataInfo(3, 32, 32, 256, 10)),
    ("flow_matching_cifar10", (1e8, 2e8), DataInfo(3, 32, 32, 256, 10)),  # 143M
])
def test_presets_build_and_run_a_loss(preset, params, data):
    """Shapes only (the meta device): the presets compose and build on their data."""
    cfg = to_config(compose_config(f"experiment={preset}"))
    with torch.device("meta"):
        model = build_model(cfg.model, data)
        out = model.loss(Batch(torch.zeros(2, data.channels, data.height, data.width, dtype=torch.uint8),
                               torch.zeros(2, dtype=torch.long)), 0)
    assert out.loss.shape == ()
    count = sum(p.numel() for p in model.parameters())
    assert params[0] < count < params[1], f"{preset}: {count:,} parameters"


def test_a_debug_run_reports_the_ode_bound_with_its_notes(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    proc = run_cli("model=flow_matching", "dataset=mnist", "trainer=debug", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["main_metric"] == "fm_loss" and math.isfinite(metrics["val"]["fm_loss"])
    test = metrics["test"]
    assert 0 < test["bits_per_dim"] < 16 and test["ode_nfe"] == 4  # Heun with 2 steps (trainer=debug)
    assert test["nll_nats"] == pytest.approx(test["bits_per_dim"] * 784 * math.log(2), rel=1e-5)
    # the probes' noise is one part of the images' spread: the mean's standard error over 64 images holds it
    assert 0 < test["bits_per_dim_probe_se"] / math.sqrt(64) < test["bits_per_dim_stderr"]
    notes = " ".join(metrics["notes"])
    assert "upper bound" in notes and "4 Rademacher probes" in notes and "heun with 2 steps" in notes
    assert "bits_per_dim, bits_per_dim_probe_var, nll_nats, ode_nfe cover the first 64 of 128 images" in notes
    assert sorted(p.name for p in (run_dir / "samples").glob("step_*.png")) == ["step_000010.png",
                                                                                "step_000020.png"]
