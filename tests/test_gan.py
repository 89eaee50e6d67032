"""DCGAN, LSGAN and WGAN: the LSGAN losses and the Lipschitz constraints checked exactly, the networks' sizes,
the paper defaults, and real training runs through the `gentrain` command on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD_ENV, compose_config, run_cli
from synthetic import write_mnist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from gentrain.composition import to_config
from gentrain.config import OptimizerName
from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.errors import ConfigError
from gentrain.composition import build_model
from gentrain.models.wgan import gradient_penalty
from gentrain.optim import build_optimizer
from gentrain.update import Updater

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MNIST_INFO = DataInfo(channels=1, height=28, width=28, levels=256, num_classes=10)


def make_model(*overrides: str, info: DataInfo = MNIST_INFO):
    return build_model(to_config(compose_config(*overrides)).model, info)


def random_batch(n: int = 16, info: DataInfo = MNIST_INFO) -> Batch:
    x = torch.randint(0, info.levels, (n, info.channels, info.height, info.width), dtype=torch.uint8)
    return Batch(x, None)


def train_steps(model, steps: int, check_after_critic_step=None, lr: float | None = None) -> None:
    """Run the model's updates with the trainer's own update machinery (gentrain/update.py)."""
    specs = model.optimizer_specs()
    optimizers = {name: build_optimizer(spec.params, spec.config, lr, torch.device("cpu"))
                  for name, spec in specs.items()}
    updater = Updater(model, optimizers, device=torch.device("cpu"))
    if check_after_critic_step is not None:
        critic_update = next(u for u in updater.updates if u.optimizer == "critic")
        after_step = critic_update.after_step
        critic_update.after_step = lambda: (after_step(), check_after_critic_step())
    torch.manual_seed(0)
    for step in range(steps):
        updater.step(random_batch(), step)
    assert updater.skipped == 0


# --- the Lipschitz constraints ------------------------------------------------------------------------------
class LinearCritic(nn.Module):
    def __init__(self, shape: tuple[int, ...], norm: float):
        super().__init__()
        weight = torch.randn(shape, dtype=torch.float64).float()
        self.weight = nn.Parameter(weight * (norm / weight.norm()))
        self.bias = nn.Parameter(torch.tensor(0.3))

    def forward(self, x, labels):
        return (x * self.weight).flatten(1).sum(1) + self.bias


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gradient_penalty_equals_its_closed_form_for_a_linear_critic(precision: str) -> None:
    """f(x) = <w, x> + b has gradient w everywhere, so the penalty is (||w|| - 1)^2 exactly, even under bf16
    autocast (the penalty computes in fp32), and its gradient with respect to w is 2 (||w|| - 1) w / ||w||."""
    torch.manual_seed(0)
    critic = LinearCritic((1, 28, 28), norm=3.0)
    real, fake = torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        penalty = gradient_penalty(critic, real, fake, None)
    assert penalty.dtype == torch.float32
    norm = critic.weight.detach().norm()
    assert penalty.item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-5)
    penalty.backward()
    expected = 2 * (norm - 1) * critic.weight.detach() / norm
    assert torch.allclose(critic.weight.grad, expected, atol=1e-6)


def test_weight_clipping_keeps_every_critic_weight_in_range_after_each_step() -> None:
    model = make_model("model=wgan", "model.lipschitz=clip", "model.critic_width=8", "model.generator_width=8",
                       "model.critic_steps=2")
    clip = model.cfg.clip_value
    assert clip == 0.01 and model.critic_norm.value == "batch"
    largest_before_clipping = []
    original_after_step = model.critic_after_step

    def record_then_clip() -> None:
        largest_before_clipping.append(max(p.abs().max().item() for p in model.critic.parameters()))
        original_after_step()

    model.critic_after_step = record_then_clip

    def check() -> None:
        for name, param in model.critic.named_parameters():
            assert param.abs().max().item() <= clip, name

    train_steps(model, 4, check_after_critic_step=check, lr=0.05)
    assert len(largest_before_clipping) == 4
    assert max(largest_before_clipping) > 10 * clip  # the steps did push weights out: the clipping was needed


def test_spectral_normalisation_keeps_every_critic_layer_at_one() -> None:
    model = make_model("model=wgan", "model.lipschitz=spectral", "model.critic_width=16", "model.generator_width=8")
    train_steps(model, 5)
    model.eval()  # read the weights with the current power-iteration estimate, without another iteration
    layers = [m for m in model.critic.modules() if isinstance(m, nn.Conv2d)]
    assert len(layers) == 3
    for layer in layers:
        assert hasattr(layer, "parametrizations"), layer
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2).item()
        raw = torch.linalg.matrix_norm(layer.parametrizations.weight.original.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=1e-2), (layer, sigma)
        assert abs(raw - 1.0) > 0.05  # the unnormalised weight is not already at 1


# --- the least-squares losses -------------------------------------------------------------------------------
@pytest.mark.parametrize("targets", [(0.0, 1.0, 1.0), (-1.0, 1.0, 0.0)])
def test_lsgan_losses_equal_their_closed_form_for_a_linear_critic(targets) -> None:
    """With D(x) = <w, x> + b, fixed real and generated images and targets (a, b, c): the critic loss is
    0.5 mean (D(x) - b)^2 + 0.5 mean (D(G(z)) - a)^2 and the generator loss 0.5 mean (D(G(z)) - c)^2, each with
    its closed-form gradient with respect to w; the logged critic scores are D's raw outputs."""
    a, b, c = targets
    model = make_model("model=lsgan", f"model.fake_target={a}", f"model.real_target={b}",
                       f"model.generator_target={c}", "model.critic_width=8", "model.generator_width=8")
    torch.manual_seed(0)
    model.critic = LinearCritic((1, 28, 28), norm=0.05)
    batch = random_batch(8)
    real = model.scale(batch.x)
    fake = (torch.rand(8, 1, 28, 28) * 2 - 1).requires_grad_(True)
    model.fake = lambda batch: fake
    w, bias = model.critic.weight.detach(), model.critic.bias.detach()
    d_real, d_fake = (real * w).flatten(1).sum(1) + bias, (fake.detach() * w).flatten(1).sum(1) + bias

    out = model.critic_loss(batch, step=0)
    expected = 0.5 * ((d_real - b) ** 2).mean() + 0.5 * ((d_fake - a) ** 2).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.logs["critic_real"].item() == pytest.approx(d_real.mean().item(), rel=1e-5, abs=1e-6)
    assert out.logs["critic_fake"].item() == pytest.approx(d_fake.mean().item(), rel=1e-5, abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss, model.critic.weight)
    expected_grad = (((d_real - b)[:, None, None, None] * real).mean(0)
                     + ((d_fake - a)[:, None, None, None] * fake.detach()).mean(0))
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)

    out = model.generator_loss(batch, step=0)
    assert out.loss.item() == pytest.approx((0.5 * ((d_fake - c) ** 2).mean()).item(), rel=1e-5)
    (grad,) = torch.autograd.grad(out.loss, fake)  # dL/dG(z) = (D(G(z)) - c) w / n
    torch.testing.assert_close(grad, (d_fake - c)[:, None, None, None] * w / 8, rtol=1e-4, atol=1e-7)


def test_lsgan_defaults_are_the_papers_and_equal_targets_are_refused() -> None:
    cfg = to_config(compose_config("model=lsgan")).model
    assert (cfg.fake_target, cfg.real_target, cfg.generator_target) == (0.0, 1.0, 1.0)
    assert (cfg.optim_critic.lr, cfg.optim_critic.betas, cfg.critic_steps) == (2e-4, [0.5, 0.999], 1)
    assert make_model("model=lsgan").critic_norm.value == "batch"
    with pytest.raises(ConfigError, match="fake_target and model.real_target are both 1.0"):
        make_model("model=lsgan", "model.fake_target=1")


# --- networks and configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("name", ["dcgan", "lsgan", "wgan"])
def test_networks_take_28_32_and_64_pixel_images(name: str, size: int) -> None:
    info = DataInfo(channels=3, height=size, width=size, levels=256, num_classes=10)
    model = make_model(f"model={name}", "model.conditional=true", "model.generator_width=8",
                       "model.critic_width=8", info=info)
    images = model.sample(5, labels=torch.arange(5), generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, size, size) and 0 <= images.min() and images.max() <= 1
    out = model.critic(model.scale(random_batch(5, info).x), torch.arange(5))
    assert out.shape == (5,)


def test_configs_that_cannot_work_are_rejected() -> None:
    with pytest.raises(ConfigError, match="square images"):
        make_model("model=dcgan", info=DataInfo(1, 30, 30, 256, 10))
    with pytest.raises(ConfigError, match="class labels"):
        make_model("model=wgan", "model.conditional=true", info=DataInfo(3, 64, 64, 256, None))
    with pytest.raises(ConfigError, match="critic_norm=batch"):
        make_model("model=wgan", "model.lipschitz=gp", "model.critic_norm=batch")
    with pytest.raises(ConfigError, match="critic_steps"):
        make_model("model=dcgan", "model.critic_steps=0")


def test_wgan_paper_settings_follow_the_lipschitz_constraint() -> None:
    def model_config(*overrides: str):
        return to_config(compose_config("model=wgan", *overrides)).model

    clip = model_config("model.lipschitz=clip")
    assert (clip.critic_steps, clip.optim_critic.name, clip.optim_critic.lr) == (5, OptimizerName.rmsprop, 5e-5)
    assert clip.optim_generator.name is OptimizerName.rmsprop
    gp = model_config()
    assert ((gp.critic_steps, gp.optim_critic.name, gp.optim_critic.lr, gp.optim_critic.betas)
            == (5, OptimizerName.adam, 1e-4, [0.0, 0.9]))
    spectral = model_config("model.lipschitz=spectral")
    assert ((spectral.critic_steps, spectral.optim_generator.lr, spectral.optim_generator.betas)
            == (1, 2e-4, [0.5, 0.999]))
    # An explicit value wins over the paper's; the rest still follows the constraint.
    custom = model_config("model.lipschitz=clip", "model.optim_critic.lr=3e-4", "model.critic_steps=2")
    assert (custom.optim_critic.lr, custom.optim_critic.name, custom.critic_steps) == (3e-4, OptimizerName.rmsprop, 2)
    dcgan = to_config(compose_config("model=dcgan")).model
    assert (dcgan.optim_generator.lr, dcgan.optim_generator.betas, dcgan.critic_steps) == (2e-4, [0.5, 0.999], 1)


def test_instance_noise_decays_linearly_to_zero() -> None:
    model = make_model("model=dcgan", "model.instance_noise=0.2", "model.instance_noise_decay_steps=100")
    assert [model.noise_std(step) for step in (0, 50, 100, 200)] == pytest.approx([0.2, 0.1, 0.0, 0.0])
    images = torch.zeros(4, 1, 28, 28)
    assert model.critic_input(images, 0).std().item() == pytest.approx(0.2, rel=0.1)
    assert torch.equal(model.critic_input(images, 100), images)


def test_the_generator_steps_once_per_critic_steps() -> None:
    updates = make_model("model=wgan", "model.critic_steps=5").updates()
    assert [(u.optimizer, u.every) for u in updates] == [("critic", 1), ("generator", 5)]
    assert make_model("model=wgan").ema_module() is not None


# --- through the real command -------------------------------------------------------------------------------
TINY = (
    "trainer=debug", "trainer.max_steps=6", "trainer.eval_every=3", "trainer.batch_size=16",
    "model.generator_width=8", "model.critic_width=8", "dataset.verify=false",
    "metrics.fid.num_samples=40", "metrics.fid.kid_subset_size=20", "metrics.fid.kid_subsets=5",
    "metrics.fid.classifier.steps=5",
)


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-mnist")
    write_mnist(root, n_train=80, n_test=20)
    return root


def scalar_tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_dcgan_trains_through_the_command(tmp_path: Path, tiny_mnist: Path) -> None:
    run_dir = tmp_path / "dcgan"
    result = run_cli("model=dcgan", *TINY, f"dataset.root={tiny_mnist}", "trainer.ema_decay=0.9",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["main_metric"] == "fid" and metrics["step"] == 6
    assert math.isfinite(metrics["val"]["fid"]) and math.isfinite(metrics["val"]["kid"])
    assert 0 < metrics["val"]["d_real"] < 1 and "fid_floor" in metrics["val"]
    assert 0 <= metrics["val"]["precision"] <= 1 and 0 <= metrics["val"]["recall"] <= 1
    assert any("40 generated images" in note and "classifier" in note for note in metrics["notes"])
    tags = scalar_tags(run_dir)
    for tag in ("train/critic_loss", "train/generator_loss", "train/d_real", "train/d_fake", "train/grad_norm/critic",
                "train/grad_norm/generator", "val/fid", "val/kid", "val/fid_floor", "val/d_real", "val/precision",
                "val/recall", "val/recall_floor"):
        assert tag in tags, tag
    assert "lr/generator" not in tags  # a constant learning rate is not plotted
    assert (run_dir / "checkpoints" / "best.pt").exists()
    assert (run_dir / "samples" / "step_000006.png").exists()


def test_lsgan_trains_through_the_command(tmp_path: Path, tiny_mnist: Path) -> None:
    run_dir = tmp_path / "lsgan"
    result = run_cli("model=lsgan", *TINY, f"dataset.root={tiny_mnist}", "model.conditional=true",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["main_metric"] == "fid" and math.isfinite(metrics["val"]["fid"])
    assert math.isfinite(metrics["val"]["critic_real"]) and math.isfinite(metrics["val"]["critic_fake"])
    assert any("raw output (no sigmoid)" in note for note in metrics["notes"])
    tags = scalar_tags(run_dir)
    assert {"train/critic_loss", "train/generator_loss", "train/critic_real", "train/critic_fake", "val/fid"} <= tags
    assert "train/d_real" not in tags


def test_wgan_trains_with_each_lipschitz_constraint_through_the_command(tmp_path: Path, tiny_mnist: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", "model=wgan", "model.lipschitz=clip,gp,spectral", "model.conditional=true", *TINY,
                     "trainer.max_steps=5", "trainer.eval_every=0", f"dataset.root={tiny_mnist}",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    for job, lipschitz in enumerate(["clip", "gp", "spectral"]):
        run_dir = sweep_dir / f"{job}_lipschitz={lipschitz}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert math.isfinite(metrics["val"]["fid"]) and math.isfinite(metrics["val"]["wasserstein_estimate"])
        tags = scalar_tags(run_dir)
        assert {"train/wasserstein_estimate", "train/critic_loss", "train/generator_loss", "val/fid"} <= tags
        assert ("train/gradient_penalty" in tags) == (lipschitz == "gp")
        assert f"lipschitz: {lipschitz}" in (run_dir / ".hydra" / "config.yaml").read_text()
