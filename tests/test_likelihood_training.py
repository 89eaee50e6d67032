"""The likelihood models through the real entry points: a few training steps on real (downsized) MNIST,
in-process and through the `gentrain` command, and the experiment presets."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, run_cli, train_in_process
from gentrain.composition import to_config
from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.composition import build_model

TINY = {
    "pixelcnn": ["model.hidden_channels=16", "model.num_layers=2", "model.head_channels=16"],
    "gated_pixelcnn": ["model.hidden_channels=8", "model.num_layers=2", "model.head_channels=16"],
    "realnvp": ["model.hidden_channels=8", "model.residual_blocks=1"],
    "pixelrnn": ["model.hidden_channels=8", "model.num_layers=2", "model.head_channels=16"],
    "made": ["model.hidden=[64]"],
    "pixel_transformer": ["model.hidden_channels=16", "model.num_layers=2", "model.num_heads=2",
                          "model.head_channels=16"],
    "pixelcnnpp": ["model.num_filters=8", "model.num_blocks=1", "model.dropout=0"],
}
# 12x12 MNIST keeps the pixel-by-pixel sample grids of every evaluation cheap.
QUICK = [
    "dataset.image_size=12", "trainer=debug", "trainer.max_steps=24", "trainer.eval_every=8", "trainer.eval_limit=64",
    "trainer.batch_size=16", "trainer.num_samples=4", "trainer.lr=0.003",
]


def val_curve(run_dir) -> list[float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("val/bits_per_dim")]


@pytest.mark.parametrize("model,extra", [
    ("pixelcnn", []),
    ("gated_pixelcnn", ["model.conditional=true"]),
    ("realnvp", ["model.coupling=additive"]),
    ("realnvp", []),
    ("pixelrnn", []),
    ("pixelrnn", ["model.layer=row_lstm"]),
    ("made", ["model.num_masks=2"]),
    ("pixel_transformer", ["model.conditional=true"]),
    ("pixelcnnpp", ["model.conditional=true"]),
])
def test_models_train_on_mnist_with_falling_finite_bits_per_dim(tmp_path, shared_data, model, extra):
    result = train_in_process(tmp_path, f"model={model}", *TINY[model], *QUICK, *extra)
    curve = val_curve(tmp_path)
    assert len(curve) == 3 and all(math.isfinite(v) for v in curve), curve
    assert curve[-1] < curve[0], f"validation bits/dim did not fall: {curve}"
    assert result["nonfinite_steps_skipped"] == 0
    test = result["test"]
    assert set(test) == {"bits_per_dim", "nll_nats"}
    # nll_nats and bits_per_dim are the same number in two units (D = 12 * 12)
    assert test["nll_nats"] == pytest.approx(test["bits_per_dim"] * 144 * math.log(2), rel=1e-5)
    images = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert any(name.startswith("step_") for name in images)
    expected_grid = "samples_by_temperature" if model == "realnvp" else "completions"
    assert any(name.startswith(expected_grid) for name in images), images


def test_binarized_pixelcnn_through_the_cli_reports_nats_and_notes(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "model=pixelcnn", "dataset.binarize=static", *TINY["pixelcnn"], *QUICK, "model.conditional=true",
        f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "pixelcnn" and metrics["main_metric"] == "bits_per_dim"
    test = metrics["test"]
    assert 0 < test["bits_per_dim"] < 1.0  # a Bernoulli output starts at 1 bit per binary pixel
    assert test["nll_nats"] == pytest.approx(test["bits_per_dim"] * 144 * math.log(2), rel=1e-5)
    assert any("Bernoulli" in note and "nats / (D ln 2)" in note for note in metrics["notes"])


def test_impossible_configs_fail_with_one_line(tmp_path, shared_data):
    proc = run_cli("model=realnvp", "model.num_scales=4", "trainer=debug",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.num_scales=4" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


CIFAR10, BINARIZED_MNIST = DataInfo(3, 32, 32, 256, 10), DataInfo(1, 28, 28, 2, 10)


@pytest.mark.parametrize("preset,params,data", [
    ("pixelcnn_cifar10", (2e6, 10e6), CIFAR10),
    ("gated_pixelcnn_cifar10", (50e6, 200e6), CIFAR10),
    ("realnvp_cifar10", (5e6, 30e6), CIFAR10),
    ("pixelrnn_cifar10", (3e6, 30e6), CIFAR10),
    ("pixelcnn_cpu", (1e4, 1e6), CIFAR10),
    ("gated_pixelcnn_cpu", (1e4, 1e6), CIFAR10),
    ("realnvp_cpu", (1e4, 1e6), CIFAR10),
    ("pixelrnn_cpu", (1e4, 1e6), CIFAR10),
    ("made_cpu", (1e6, 1e8), CIFAR10),
    ("pixelrnn_binarized_mnist", (1e4, 1e6), BINARIZED_MNIST),
    ("made_binarized_mnist", (1e6, 2e6), BINARIZED_MNIST),  # 784 -> 500 -> 784, and 784 x 784 direct weights
    ("pixel_transformer_cifar10", (50e6, 100e6), CIFAR10),
    ("pixel_transformer_cpu", (1e4, 1e6), CIFAR10),
    ("hour_pixel_transformer_binarized_mnist", (1e4, 1e6), BINARIZED_MNIST),
    ("pixelcnnpp_cifar10", (40e6, 80e6), CIFAR10),
    ("pixelcnnpp_cpu", (1e4, 1e6), CIFAR10),
    ("hour_pixelcnnpp_mnist", (1e5, 1e7), DataInfo(1, 28, 28, 256, 10)),
])
def test_experiment_presets_build_and_run_a_loss_shape_check(preset, params, data):
    """The presets compose, build on their data's shape, and a loss runs through them (on the meta device:
    shapes only, no memory or compute, so the paper-sized networks cost nothing here)."""
    cfg = to_config(compose_config(f"experiment={preset}"))
    with torch.device("meta"):
        model = build_model(cfg.model, data).eval()  # eval: ActNorm's data-dependent init needs real values
        batch = Batch(torch.zeros(2, data.channels, data.height, data.width, dtype=torch.uint8), None)
        out = model.loss(batch, 0)
    assert out.loss.shape == ()
    count = sum(p.numel() for p in model.parameters())
    assert params[0] < count < params[1], f"{preset}: {count:,} parameters"
