"""scripts/plot_curves.py on two tiny runs: the curves come from the runs' own events, one figure per dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from conftest import IN_PROCESS_ENV, REPO

import gentrain

pytest.importorskip("matplotlib")
sys.path.insert(0, str(REPO / "scripts"))
import plot_curves  # noqa: E402

QUICK = ["trainer=debug", "trainer.max_steps=6", "trainer.eval_every=2", "trainer.progress_bar=false"]


def test_curves_of_two_runs_against_minutes_and_images(tmp_path: Path, shared_data: Path) -> None:
    runs = {"vae": tmp_path / "vae", "made": tmp_path / "made"}
    with mock.patch.dict(os.environ, IN_PROCESS_ENV):
        gentrain.train([*QUICK, "model.arch=mlp", "model.hidden=[16]", "dataset.binarize=static"], run_dir=runs["vae"])
        gentrain.train([*QUICK, "model=made", "model.hidden=[16]", "dataset.binarize=static",
                        "trainer.batch_size=4"], run_dir=runs["made"])
    vae, made = (plot_curves.read_curve(runs[name], None) for name in ("vae", "made"))
    assert vae["tag"] == "val/neg_elbo_nats" and made["tag"] == "val/nll_nats"  # nats per image on binary data
    assert [step for step, _ in made["points"]] == [2, 4, 6] and made["batch"] == 4
    assert sorted(made["minutes"]) == [2, 4, 6] and all(m > 0 for m in made["minutes"].values())
    assert vae["dataset"] == made["dataset"] == "mnist, binarized"

    out = tmp_path / "plots"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "plot_curves.py"), *map(str, runs.values()),
                           "--out", str(out), "--published", "mine=100"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / "curves_mnist_binarized_nats.png")]
    assert (out / "curves_mnist_binarized_nats.png").read_bytes()[:4] == b"\x89PNG"

    refused = subprocess.run([sys.executable, str(REPO / "scripts" / "plot_curves.py"), str(tmp_path)],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "is not a gentrain run directory" in refused.stderr


def test_a_continued_runs_label_names_each_override_once_with_its_last_value() -> None:
    saved = ["experiment=hour_pixelrnn_binarized_mnist", "trainer.max_steps=27000", "seed=1"]
    again = ["experiment=hour_pixelrnn_binarized_mnist", "trainer.max_steps=14000", "trainer.resume=/a/b.pt"]
    assert plot_curves._label([*saved, *again]) == ("seed=1 experiment=hour_pixelrnn_binarized_mnist "
                                                    "trainer.max_steps=14000")
