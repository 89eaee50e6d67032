"""model=ddpm through the real entry points: the debug run of the CLI, a conditional hybrid variant re-scored
by gentrain-eval with the full bound, the evaluator's standard errors, and the presets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import compose_config, run_cli
from gentrain import cli_eval
from gentrain.composition import build_model, to_config
from gentrain.data.base import ImageDataset, ImageSplit
from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.evaluation import Evaluator
from gentrain.config import Precision
from gentrain.models.base import GenerativeModel


def test_debug_run_through_the_cli(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    proc = run_cli("model=ddpm", "dataset=mnist", "trainer=debug", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test) == {"bits_per_dim", "nll_nats", "bits_per_dim_stderr", "nll_nats_stderr", "mse"}
    assert test["nll_nats"] == pytest.approx(test["bits_per_dim"] * 784 * math.log(2), rel=1e-5)
    assert 0 < test["bits_per_dim_stderr"] < test["bits_per_dim"]
    notes = " ".join(metrics["notes"])
    assert "T=1000" in notes and "discretized Gaussian decoder" in notes and "bins of width 2/255" in notes
    assert "10 of the 1000 steps" in notes  # trainer=debug shrinks the sampling steps
    assert any(p.name.startswith("step_") for p in (run_dir / "samples").iterdir())


def test_conditional_hybrid_variant_trains_and_gentrain_eval_sums_every_step(tmp_path, shared_data):
    run_dir = tmp_path / "run"  # by the command, so that gentrain-eval finds .hydra/
    proc = run_cli(
        "model=ddpm", "dataset.image_size=12", "trainer=debug", "trainer.max_steps=4",
        "trainer.eval_every=4", "trainer.eval_limit=32", "trainer.num_samples=4", "model.timesteps=20",
        "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[6]",
        "model.conditional=true", "model.variance=learned", "model.objective=hybrid", "model.prediction=v",
        "model.schedule=cosine", "model.guidance_scale=2", "model.sampler=ddim", "model.ddim_eta=1",
        f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run_dir / "metrics.json").read_text())
    sampled = result["test"]
    assert all(math.isfinite(v) for v in sampled.values()) and result["nonfinite_steps_skipped"] == 0
    results, written = cli_eval.evaluate_run(cli_eval.EvalOptions(run=str(run_dir), checkpoint="last"),
                                             ["model.full_bound=true"])
    full = results["test"]
    assert {"decoder_nats", "diffusion_nats", "prior_nats"} <= set(full)
    parts = full["decoder_nats"] + full["diffusion_nats"] + full["prior_nats"]
    assert full["nll_nats"] == pytest.approx(parts, rel=1e-5)
    assert any("full sum over all 20 steps" in note for note in results["notes"])
    # the same images, the same expectation: the sampled-t mean lies within its standard error's reach
    assert abs(full["nll_nats"] - sampled["nll_nats"]) < 4 * sampled["nll_nats_stderr"]


class Constant(GenerativeModel):
    """Evaluates to each image's first pixel value: known mean and standard error."""

    standard_errors = ("value",)

    def __init__(self):
        super().__init__(DataInfo(1, 2, 2, 256, None))
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, torch.Tensor]:
        first = batch.x[:, 0, 0, 0].float()
        return {"value": first, "plain": first}


def test_the_evaluator_reports_the_standard_error_of_the_mean():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (37, 1, 2, 2), dtype=torch.uint8)
    split = ImageSplit(images, None)
    dataset = ImageDataset("toy", split, split, split)
    evaluator = Evaluator(Constant(), dataset, batch_size=8, precision=Precision.fp32,
                          device=torch.device("cpu"), seed=0, progress=False)
    metrics = evaluator.split("test")
    values = images[:, 0, 0, 0].double()
    assert metrics["value"] == pytest.approx(float(values.mean()), rel=1e-6)
    assert metrics["value_stderr"] == pytest.approx(float(values.std() / math.sqrt(37)), rel=1e-5)
    assert "plain_stderr" not in metrics


@pytest.mark.parametrize("preset,params,data", [
    ("ddpm_cifar10", (35.6e6, 35.8e6), DataInfo(3, 32, 32, 256, 10)),  # Ho et al.: 35.7M
    ("cpu_ddpm_mnist", (0.5e6, 2e6), DataInfo(1, 28, 28, 256, 10)),
    ("iddpm_cifar10", (40e6, 70e6), DataInfo(3, 32, 32, 256, 10)),
    ("cpu_ddpm_cifar10", (0.5e6, 2e6), DataInfo(3, 32, 32, 256, 10)),
    ("vdm_cifar10", (20e6, 40e6), DataInfo(3, 32, 32, 256, 10)),
    ("cpu_vdm_mnist", (0.5e6, 2e6), DataInfo(1, 28, 28, 256, 10)),
    ("cpu_vdm_cifar10", (0.5e6, 2e6), DataInfo(3, 32, 32, 256, 10)),
])
def test_presets_build_with_their_sizes(preset, params, data):
    cfg = to_config(compose_config(f"experiment={preset}"))
    with torch.device("meta"):  # shapes only: the paper's network costs nothing here
        model = build_model(cfg.model, data)
        images = torch.zeros(2, data.channels, data.height, data.width, dtype=torch.uint8)
        out = model.loss(Batch(images, None), 0)
    assert out.loss.shape == ()
    count = sum(p.numel() for p in model.parameters())
    assert params[0] < count < params[1], f"{preset}: {count:,} parameters"
