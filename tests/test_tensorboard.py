"""TensorBoard as a user reads it, through TensorBoard's own HTTP data API (scripts/check_tensorboard.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import REPO, command_in_process, run_cli

from gentrain import cli_eval

sys.path.insert(0, str(REPO / "scripts"))
from check_tensorboard import view  # noqa: E402

QUICK = ("trainer=debug", "model.arch=mlp", "model.hidden=[32]", "trainer.max_steps=6", "trainer.log_every=2",
         "trainer.eval_every=3", "trainer.progress_bar=false")


def test_a_sweep_in_tensorboard(tmp_path: Path, shared_data: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *QUICK, "model.latent_dim=4,8", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = view(sweep)
    assert sorted(seen["runs"]) == ["0_latent_dim=4", "1_latent_dim=8"]  # runs named by what differs

    scalars = seen["scalars"]["0_latent_dim=4"]
    assert {"train/neg_elbo_nats", "val/bits_per_dim", "test/iw_nll_nats", "perf/images_per_sec"} <= set(scalars)
    assert not {"train/loss", "train/beta", "lr/model"} & set(scalars)  # no duplicates, no constants
    assert seen["images"]["0_latent_dim=4"] == ["images/interpolations", "images/reconstructions", "images/samples"]
    assert "config/text_summary" in seen["text"]["0_latent_dim=4"]

    hparams = seen["hparams"]
    columns, rows = hparams["columns"], hparams["rows"]
    assert {"model", "dataset", "model.latent_dim", "trainer", "trainer.batch_size", "seed"} <= set(columns)
    assert columns["model.conditional"] == "DATA_TYPE_BOOL" and rows["0_latent_dim=4"]["model.conditional"] is False
    assert not [c for c in columns if c in ("dataset.mirrors", "dataset.download", "dataset.url")]
    assert len(columns) < 30  # a curated list, not the flattened config
    assert {rows[r]["model.latent_dim"] for r in rows} == {4.0, 8.0}  # the swept key, per run
    assert rows["0_latent_dim=4"]["model"] == "vae" and rows["0_latent_dim=4"]["trainer"] == "debug"
    assert "test/bits_per_dim" in hparams["metrics"]

    # gentrain-eval writes under the run, with the run's own tag names: the two share each chart.
    run_dir = sweep / "0_latent_dim=4"
    status, _, err = command_in_process(cli_eval.main, f"run={run_dir}", "model.iw_samples=5")
    assert status == 0, err
    both = view(run_dir)["scalars"]
    assert sorted(both) == [".", "eval"] and "test/iw_nll_nats" in set(both["."]) & set(both["eval"])
