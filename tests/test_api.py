"""The Python API (gentrain/api.py): train, load a run, sample, build a model; and the README's notebook example."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from unittest import mock

import torch
from conftest import IN_PROCESS_ENV, REPO

import gentrain
from gentrain.checkpoint import load_checkpoint

QUICK = ["trainer=debug", "model.arch=mlp", "model.hidden=[32]", "trainer.max_steps=4", "trainer.eval_every=2",
         "trainer.ema_decay=0.9", "trainer.progress_bar=false"]


def test_train_load_sample_and_build(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    with mock.patch.dict(os.environ, IN_PROCESS_ENV):
        metrics = gentrain.train(QUICK, run_dir=run_dir)
    assert metrics["step"] == 4 and metrics["model"] == "vae"
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert {"config.yaml", "hydra.yaml", "overrides.yaml"} <= {p.name for p in (run_dir / ".hydra").iterdir()}
    assert "overrides: trainer=debug model.arch=mlp" in (run_dir / "train.log").read_text()

    run = gentrain.load_run(run_dir)
    assert run.step == 4 and run.checkpoint.name == "best.pt" and run.data.height == 28
    shadow = load_checkpoint(run.checkpoint)["ema"]["shadow"]
    weights = [p for p in run.model.parameters() if p.requires_grad]
    assert all(torch.equal(w, s) for w, s in zip(weights, shadow))  # the EMA weights, applied
    first, again = run.sample(6, seed=1), run.sample(6, seed=1)
    assert first.shape == (6, 1, 28, 28) and torch.equal(first, again) and 0 <= first.min() <= first.max() <= 1

    model = gentrain.build_model("vae", latent_dim=8, arch="mlp")
    assert type(model).__name__ == "VAE" and model.cfg.latent_dim == 8 and model.name == "vae"


def test_the_readme_notebook_example_runs(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    with mock.patch.dict(os.environ, IN_PROCESS_ENV):
        gentrain.train(QUICK, run_dir=run_dir)
    readme = (REPO / "README.md").read_text()
    section = readme.split("### From Python (a notebook)", 1)[1]
    code = re.search(r"\n\n((?:    .*\n|\n(?=    ))+)", section).group(1)  # the first indented block
    code = "\n".join(line[4:] for line in code.splitlines())
    code = re.sub(r'load_run\("[^"]+"\)', f'load_run("{run_dir}")', code)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["images"].shape == (16, 1, 28, 28) and namespace["grid"].ndim == 3


def test_train_behaves_as_the_command_does(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    """trainer.resume=<run> continues that run in place (the API trained into a new directory), and a bad value
    stops before any directory is made (the API left an empty one)."""
    import pytest

    from gentrain.errors import ConfigError, DataError

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    with mock.patch.dict(os.environ, IN_PROCESS_ENV):
        gentrain.train(QUICK, run_dir=run_dir)
        with pytest.raises(ConfigError, match="trainer.batch_size must be between 1 and"):
            gentrain.train([*QUICK, "trainer.batch_size=0"])
        assert not (tmp_path / "outputs").exists()
        (tmp_path / "no-data").mkdir()
        with pytest.raises(DataError, match="MNIST files not found"):  # found only once the directory is locked
            gentrain.train([*QUICK, f"dataset.root={tmp_path / 'no-data'}", "dataset.download=false"])
        assert list((tmp_path / "outputs").glob("*/*")) == []  # no run directory, empty or not
        metrics = gentrain.train([f"trainer.resume={run_dir}", "trainer.max_steps=6"])
    assert metrics["step"] == 6 and list((tmp_path / "outputs").glob("*/*")) == []
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 6
    assert (run_dir / "checkpoints" / "step_00000006.pt").exists()
    assert "resumed from" in (run_dir / "train.log").read_text()
