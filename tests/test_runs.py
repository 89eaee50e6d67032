"""After training: gentrain-sample, gentrain-eval and the results table, on runs made in the test itself."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, run_cli
from synthetic import write_mnist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gentrain import cli_eval, cli_sample
from gentrain.errors import ConfigError

VAE_RUN = ("trainer=debug", "trainer.max_steps=6", "trainer.eval_every=3", "model.arch=mlp", "model.iw_samples=2",
           "trainer.ema_decay=0.9")
GAN_RUN = ("model=dcgan", "trainer=debug", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=16",
           "model.generator_width=8", "model.critic_width=8", "dataset.verify=false", "metrics.fid.num_samples=40",
           "metrics.fid.kid_subset_size=20", "metrics.fid.kid_subsets=5", "metrics.fid.classifier.steps=5")


def make_run(run_dir: Path, *overrides: str) -> Path:
    """A run made by the real command, so it has everything a run directory holds (.hydra/ included)."""
    result = run_cli(*overrides, "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "vae", *VAE_RUN)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-mnist")
    write_mnist(root, n_train=80, n_test=20)
    return make_run(tmp_path_factory.mktemp("runs") / "dcgan", *GAN_RUN, f"dataset.root={root}")


def checkpoint_digests(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (run_dir / "checkpoints").iterdir()}


def console_script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_sample_from_a_likelihood_model(vae_run: Path, capsys) -> None:
    cli_sample.main([f"run={vae_run}", "n=12", "seed=3", "temperature=0.7"])
    png, npz = (vae_run / "samples" / f"samples_step00000006_seed3_t0.7.{ext}" for ext in ("png", "npz"))
    assert png.exists() and str(png) in capsys.readouterr().out
    data = np.load(npz)
    assert data["images"].shape == (12, 1, 28, 28) and data["images"].dtype == np.uint8
    assert data["levels"] == 256 and data["checkpoint"] == "checkpoints/best.pt" and data["temperature"] == 0.7
    again = vae_run / "samples" / "again.npz"
    cli_sample.main([f"run={vae_run}", "n=12", "seed=3", "temperature=0.7", "name=again"])
    assert np.array_equal(np.load(again)["images"], data["images"])  # same seed, same samples


def test_interpolation_and_refused_completion(vae_run: Path, capsys) -> None:
    cli_sample.main([f"run={vae_run}", "interpolate=true", "n=20", f"dataset.root={SHARED_DATA}"])
    data = np.load(vae_run / "samples" / "interpolation_step00000006_seed0.npz")
    assert data["images"].shape == (20, 1, 28, 28)  # 2 pairs x 10 steps
    with pytest.raises(SystemExit) as exit_info:
        cli_sample.main([f"run={vae_run}", "complete=top_half", f"dataset.root={SHARED_DATA}"])
    assert exit_info.value.code == 2 and "cannot complete images" in capsys.readouterr().err


def test_eval_recomputes_test_metrics_without_touching_checkpoints(vae_run: Path) -> None:
    before = checkpoint_digests(vae_run)
    result = subprocess.run(
        [console_script("gentrain-eval"), f"run={vae_run}", "model.iw_samples=50", "trainer.eval_limit=100",
         f"dataset.root={SHARED_DATA}", "splits=[val,test]"], capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((vae_run / "eval" / "metrics.json").read_text())
    assert metrics["overrides"][0] == "model.iw_samples=50" and metrics["ema_weights"] is True
    assert metrics["test"]["iw_nll_nats"] <= metrics["test"]["neg_elbo_nats"] + 1.0
    assert metrics["eval_images"] == {"val": 100, "test": 100}
    assert any("k=50" in note for note in metrics["notes"])
    events = EventAccumulator(str(vae_run / "eval"))
    events.Reload()
    assert "test/iw_nll_nats" in events.Tags()["scalars"]
    assert checkpoint_digests(vae_run) == before


def test_sample_and_eval_a_gan(gan_run: Path) -> None:
    cli_sample.main([f"run={gan_run}", "n=9"])
    assert np.load(gan_run / "samples" / "samples_step00000004_seed0.npz")["images"].shape == (9, 1, 28, 28)
    with pytest.raises(SystemExit):
        cli_sample.main([f"run={gan_run}", "temperature=0.5"])  # a GAN has no temperature
    results, written = cli_eval.evaluate_run(cli_eval.EvalOptions(run=str(gan_run), checkpoint="last"), [])
    assert written == gan_run / "eval" / "metrics.json"
    assert np.isfinite(results["sample_quality"]["fid"]) and "d_real" in results["test"]


def test_eval_of_the_sample_quality_alone(gan_run: Path, vae_run: Path, tmp_path: Path) -> None:
    """splits=[]: FID and its companions without a pass over any split; refused when there is no FID."""
    options = cli_eval.EvalOptions(run=str(gan_run), checkpoint="last", splits=[], out=str(tmp_path / "fid"))
    results, written = cli_eval.evaluate_run(options, [])
    assert np.isfinite(results["sample_quality"]["fid"]) and "test" not in results
    assert results["eval_images"] == {} and written == tmp_path / "fid" / "metrics.json"
    with pytest.raises(ConfigError, match=r"splits=\[\] with the sample quality off leaves nothing"):
        cli_eval.evaluate_run(cli_eval.EvalOptions(run=str(vae_run), splits=[], out=str(tmp_path / "v")), [])
    assert not (tmp_path / "v" / "metrics.json").exists()


def test_a_copied_run_still_samples(vae_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(vae_run, copy)
    result = subprocess.run([console_script("gentrain-sample"), f"run={copy}", "n=4", "checkpoint=last"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (copy / "samples" / "samples_step00000006_seed0.png").exists()


def test_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    for command in ("gentrain-sample", "gentrain-eval"):
        result = subprocess.run([console_script(command), f"run={tmp_path}"], capture_output=True, text=True)
        assert result.returncode == 2
        assert "is not a gentrain run directory" in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_that_does_not_match_its_config(vae_run: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(vae_run, copy)
    config = copy / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("latent_dim: 32", "latent_dim: 16"))
    with pytest.raises(SystemExit):
        cli_sample.main([f"run={copy}"])
    assert "trained with another model config (model.latent_dim: 32 there, 16 here)" in capsys.readouterr().err


def test_unknown_options_are_named(vae_run: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli_sample.main([f"run={vae_run}", "nn=3"])
    assert "unknown option 'nn'" in capsys.readouterr().err


def test_results_table_is_built_from_run_directories(vae_run: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results_table.py"), str(vae_run), "--metrics", "test/neg_elbo_nats"],
        capture_output=True, text=True, check=True,
    )
    header, rule, row = result.stdout.strip().splitlines()
    assert "test/neg_elbo_nats" in header and "| vae | mnist | 6 x 8 |" in row
    value = json.loads((vae_run / "metrics.json").read_text())["test"]["neg_elbo_nats"]
    assert f"{value:.2f}" in row and "`gentrain trainer=debug" in row


def test_results_table_reads_gentrain_eval_numbers(vae_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(vae_run, copy)
    (copy / "eval").mkdir(exist_ok=True)
    (copy / "eval" / "metrics.json").write_text(json.dumps({"test": {"neg_elbo_nats": 123.456}}))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results_table.py"), str(copy), "--metrics", "eval/test/neg_elbo_nats"],
        capture_output=True, text=True, check=True,
    )
    header, _, row = result.stdout.strip().splitlines()
    assert "eval/test/neg_elbo_nats" in header and "| 123.46 |" in row
    # another folder (gentrain-eval out=<run>/eval_steps10), its overrides beside the training command
    (copy / "eval_steps10").mkdir()
    (copy / "eval_steps10" / "metrics.json").write_text(json.dumps(
        {"sample_quality": {"fid": 4.5}, "overrides": ["model.sampling_steps=10"]}))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results_table.py"), str(copy), "--eval-dir", "eval_steps10",
         "--metrics", "eval/sample_quality/fid"], capture_output=True, text=True, check=True)
    row = result.stdout.strip().splitlines()[-1]
    assert "| 4.5 |" in row and "`, then `gentrain-eval run=<run> model.sampling_steps=10`" in row


@pytest.mark.parametrize("eval_dir", ["..", "../other", "/tmp", "missing"])
def test_results_table_refuses_an_eval_folder_outside_the_run_or_missing(vae_run: Path, eval_dir: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results_table.py"), str(vae_run), "--eval-dir", eval_dir],
        capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert "not a folder name inside a run" in lines[-1] or "has no missing/metrics.json" in lines[-1]
