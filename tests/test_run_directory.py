"""Run directories are data: never hijacked, damaged or mixed up, whatever is in them or whoever else runs.

Each test makes its runs with the real command (a subprocess, or `gentrain` in this process where a test must
monkeypatch), then tries a crafted directory, a refused resume, a second process, a killed save, a run that
goes non-finite, a full disk or a signal, and checks that what was saved is untouched.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, command_in_process, gentrain_in_process, run_cli, start_cli

import gentrain.checkpoint as checkpoint_module
from gentrain import cli_eval, cli_sample, run_names
from gentrain.checkpoint import CheckpointManager, load_checkpoint
from gentrain.errors import CheckpointError
from gentrain.models.vae import VAE
from gentrain.rundir import read_yaml

QUICK = ("trainer=debug", "model.arch=mlp", "model.hidden=[32]", "model.iw_samples=2", "trainer.max_steps=6",
         "trainer.eval_every=3", "trainer.progress_bar=false")


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of a run directory (hidden ones too) with the digest of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def one_error_line(result: subprocess.CompletedProcess | tuple[int, str, str]) -> str:
    """The single line of a user error (exit 2), from a subprocess or from gentrain_in_process."""
    status, out, err = result if isinstance(result, tuple) else (result.returncode, result.stdout, result.stderr)
    assert status == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out + err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "vae"
    result = run_cli(*QUICK, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# --- a run directory is data, never code --------------------------------------------------------------------------


def test_a_crafted_resume_instantiates_nothing(run_copy: Path, tmp_path: Path) -> None:
    """overrides.yaml asking Hydra to build a callback that would create a file: refused, nothing written."""
    target = tmp_path / "written-by-the-attacker"
    overrides = run_copy / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + "".join(
        f"- hydra.callbacks.x.{key}\n" for key in ("_target_=builtins.open", f"file={target}", "mode=w")))
    before = snapshot(run_copy)
    line = one_error_line(gentrain_in_process(f"trainer.resume={run_copy}"))
    assert "is not a gentrain setting" in line and "hydra.callbacks.x._target_" in line
    assert not target.exists() and snapshot(run_copy) == before


@pytest.mark.parametrize("tagged", ["overrides.yaml", "config.yaml"])
def test_yaml_tags_are_refused_by_every_reader(run_copy: Path, tmp_path: Path, tagged: str) -> None:
    target = tmp_path / "written-by-the-attacker"
    payload = f"!!python/object/apply:os.system ['touch {target}']"
    path = run_copy / ".hydra" / tagged
    path.write_text(f"- {payload}\n" if tagged == "overrides.yaml" else f"seed: {payload}\n" + path.read_text())
    before = snapshot(run_copy)
    bin_dir = Path(sys.executable).parent
    readers = {  # every command that reads the file
        "overrides.yaml": [[sys.executable, "-m", "gentrain", f"trainer.resume={run_copy}"]],
        "config.yaml": [[str(bin_dir / "gentrain-sample"), f"run={run_copy}", "n=2"],
                        [str(bin_dir / "gentrain-eval"), f"run={run_copy}"]],
    }
    commands = readers[tagged] + [[sys.executable, str(REPO / "scripts" / "results_table.py"), str(run_copy)]]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                                env={**os.environ, "GENTRAIN_DATA": str(SHARED_DATA)})
        line = one_error_line(result)
        assert "not plain YAML data" in line and tagged in line, (command, line)
    assert not target.exists() and snapshot(run_copy) == before


# --- nothing already saved is lost or mixed --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, reason",
    [
        (["model.latent_dim=8"], "trained with another model config"),
        (["dataset=cifar10"], "trained on data of shape"),
        ([f"dataset.root={SHARED_DATA}/nonexistent", "dataset.download=false"], "does not exist"),
        (["trainer.batch_size=0"], "trainer.batch_size must be"),
    ],
)
def test_a_refused_resume_leaves_the_run_byte_identical(run_copy: Path, tmp_path: Path, args, reason) -> None:
    before = snapshot(run_copy)
    line = one_error_line(gentrain_in_process(f"trainer.resume={run_copy}", *args))
    assert reason in line
    assert snapshot(run_copy) == before
    status, out, err = command_in_process(cli_sample.main, f"run={run_copy}", "n=2", f"out={tmp_path / 'samples'}")
    assert status == 0, err  # the run still samples from its own checkpoint


def test_a_refused_resume_of_a_missing_checkpoint(run_copy: Path, tmp_path: Path) -> None:
    before = snapshot(run_copy)
    line = one_error_line(gentrain_in_process(f"trainer.resume={run_copy / 'checkpoints' / 'step_00000099.pt'}"))
    assert "is not a gentrain run directory or one of its checkpoints" in line
    for path in (run_copy / "checkpoints").glob("*.pt"):
        path.unlink()
    before = snapshot(run_copy)
    line = one_error_line(gentrain_in_process(f"trainer.resume={run_copy}"))
    assert "has no checkpoint to continue from" in line and snapshot(run_copy) == before


@pytest.mark.parametrize("resume", [None, "another run"])
def test_a_run_directory_that_holds_a_run_takes_only_its_own_continuation(
        run_copy: Path, finished_run: Path, resume) -> None:
    """A fresh run, or one continuing another run, started where a run already lives would replace its best
    checkpoint and metrics and mix its checkpoints: refused, byte-identical; trainer.resume=auto continues it."""
    before = snapshot(run_copy)
    args = [] if resume is None else [f"trainer.resume={finished_run}"]
    line = one_error_line(gentrain_in_process(*QUICK, *args, f"hydra.run.dir={run_copy}"))
    assert f"{run_copy} already holds a run: continue it with trainer.resume=auto" in line
    assert snapshot(run_copy) == before
    status, _, err = gentrain_in_process(*QUICK, "trainer.max_steps=8", "trainer.resume=auto",
                                         f"hydra.run.dir={run_copy}")
    assert status == 0, err
    assert json.loads((run_copy / "status.json").read_text())["status"] == "finished"
    assert load_checkpoint(run_copy / "checkpoints" / "step_00000008.pt")["step"] == 8


@pytest.mark.parametrize("command, main, extra", [
    ("gentrain-eval", cli_eval.main, []),
    ("gentrain-sample", cli_sample.main, ["n=2"]),
])
def test_sample_and_eval_never_write_into_a_run_s_own_files(run_copy: Path, finished_run: Path, tmp_path: Path,
                                                            command: str, main, extra: list[str]) -> None:
    """out= naming a run directory (this one or another) or its checkpoints/ or .hydra/ would overwrite its
    metrics.json or mix TensorBoard events and files into it: refused before any work."""
    before, other = snapshot(run_copy), snapshot(finished_run)
    for out in (run_copy, finished_run, run_copy / "checkpoints", run_copy / ".hydra" / "x",
                run_copy / "eval" / ".." / "checkpoints"):
        line = one_error_line(command_in_process(main, f"run={run_copy}", *extra, f"out={out}"))
        assert line.startswith(f"{command}: error: out=") and "choose another folder with out=<folder>" in line
        assert "is a run directory" in line or "is in the" in line
    assert snapshot(run_copy) == before and snapshot(finished_run) == other
    status, _, err = command_in_process(main, f"run={run_copy}", *extra, f"out={run_copy / 'eval' / 'mine'}")
    assert status == 0, err  # a folder of its own inside the run is fine


def test_training_never_lands_in_a_run_s_own_files(run_copy: Path) -> None:
    before = snapshot(run_copy)
    for key, value in (("hydra.run.dir", run_copy / "checkpoints" / "new"), ("hydra.sweep.dir", run_copy)):
        sweep = ["-m", "seed=1,2"] if key == "hydra.sweep.dir" else []
        line = one_error_line(gentrain_in_process(*sweep, *QUICK, f"{key}={value}"))
        assert f"{key}={value}" in line and "choose another folder" in line
    assert snapshot(run_copy) == before


def test_a_resume_path_with_equals_signs_and_commas(run_copy: Path, tmp_path: Path) -> None:
    odd = tmp_path / "lr=1e-3,bs=32" / "run"
    odd.parent.mkdir()
    run_copy.rename(odd)
    status, out, err = gentrain_in_process(f"trainer.resume={odd}", "trainer.max_steps=8")
    assert status == 0, out + err
    assert json.loads((odd / "metrics.json").read_text())["step"] == 8
    status, out, err = gentrain_in_process(f"trainer.resume={odd}", "trainer.max_steps=9")  # replays its quoting
    assert status == 0, out + err


def test_a_continued_run_names_each_key_once_with_the_value_given_now(tmp_path: Path) -> None:
    """trainer.resume=<another run's checkpoint> with a new value: the saved override of that key gives way,
    so the new run's overrides.yaml is the command that reproduces it, each key once."""
    from gentrain.cli import resume_arguments

    run_dir = tmp_path / "long"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- model=made\n- trainer.max_steps=27000\n- seed=1\n")
    (run_dir / "checkpoints").mkdir()
    checkpoint = run_dir / "checkpoints" / "step_00005000.pt"
    checkpoint.write_bytes(b"")
    arguments = resume_arguments([f"trainer.resume={checkpoint}", "trainer.max_steps=14000",
                                  f"hydra.run.dir={tmp_path / 'short'}"])
    assert [a for a in arguments if not a.startswith(("trainer.resume=", "hydra."))] == [
        "model=made", "seed=1", "trainer.max_steps=14000"]


def test_a_second_process_on_the_same_directory_is_refused(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    first = start_cli(*QUICK, "trainer.max_steps=100000000", "trainer.eval_every=1000000", f"hydra.run.dir={run_dir}",
                      cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "train.log").exists():  # the first run has passed its checks and committed
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        before = snapshot(run_dir / ".hydra")
        line = one_error_line(gentrain_in_process(*QUICK, run_dir=run_dir))
        assert f"is in use by another gentrain process (pid {first.pid} on host" in line
        line = one_error_line(gentrain_in_process(*QUICK, "trainer.resume=auto", run_dir=run_dir))
        assert f"pid {first.pid}" in line  # a scheduler starting the same job twice
        assert snapshot(run_dir / ".hydra") == before
    finally:
        first.kill()
        first.wait()
    # Killed: the kernel released its lock, so the directory can be used (and resumed) again.
    status, out, err = gentrain_in_process(*QUICK, "trainer.resume=auto", run_dir=run_dir)
    assert status == 0, out + err


def test_commands_started_in_the_same_second_get_a_directory_each(tmp_path: Path, monkeypatch) -> None:
    """Run directories are named by the launch second: a command that starts while another run works in that
    directory (a shell loop with &), or once that directory holds a run, gets its own (<time>_2, <time>_3)."""
    monkeypatch.chdir(tmp_path)
    first = start_cli(*QUICK, "seed=1", "trainer.max_steps=100000000", "trainer.eval_every=1000000", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "outputs").glob("*/*/train.log")):  # it has passed its checks and committed
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        base = next((tmp_path / "outputs").glob("*/*/train.log")).parent
        second = datetime.datetime.strptime(f"{base.parent.name} {base.name}", "%Y-%m-%d %H-%M-%S")
        set_launch_time = run_names.set_launch_time
        monkeypatch.setattr(run_names, "set_launch_time", lambda _: set_launch_time(second))
        status, out, err = gentrain_in_process(*QUICK, "seed=2")  # while the first works there
    finally:
        first.kill()
        first.wait()
    assert status == 0, out + err
    status, out, err = gentrain_in_process(*QUICK, "seed=3", "trainer.resume=auto")  # later, same second
    assert status == 0, out + err
    moved = [base.with_name(f"{base.name}_2"), base.with_name(f"{base.name}_3")]
    assert sorted(base.parent.iterdir()) == [base, *moved]
    assert [read_yaml(d / ".hydra" / "config.yaml")["seed"] for d in (base, *moved)] == [1, 2, 3]  # none mixed
    for directory in moved:
        assert json.loads((directory / "status.json").read_text())["status"] == "finished"
        assert read_yaml(directory / ".hydra" / "hydra.yaml")["hydra"]["run"]["dir"] == str(directory)
    assert f"{base} is taken by another run" in (moved[0] / "train.log").read_text()


def test_temporaries_of_a_killed_save_are_removed_on_resume(run_copy: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as after kill -9 mid-save
    stale = [run_copy / "checkpoints" / f".step_00000009.pt.{dead.pid}.tmp", run_copy / f".status.json.{dead.pid}.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    status, out, err = gentrain_in_process(f"trainer.resume={run_copy}", "trainer.max_steps=9")
    assert status == 0, out + err
    assert not any(p.exists() for p in stale) and not list(run_copy.rglob("*.tmp"))
    assert "removed 2 temporary file(s) left by a killed process" in (run_copy / "train.log").read_text()


def test_a_run_that_never_had_a_finite_step_names_no_good_checkpoint(tmp_path: Path, shared_data: Path,
                                                                     monkeypatch) -> None:
    def nan_loss(self, batch, step):
        out = original_loss(self, batch, step)
        out.loss = out.loss * float("nan")
        return out

    def nan_evaluation(self, batch, *, final=False):
        return {name: value * float("nan") for name, value in original_evaluate(self, batch, final=final).items()}

    original_loss, original_evaluate = VAE.loss, VAE.evaluate
    monkeypatch.setattr(VAE, "loss", nan_loss)
    monkeypatch.setattr(VAE, "evaluate", nan_evaluation)
    status, out, err = gentrain_in_process(*QUICK, "trainer.max_steps=20", "trainer.eval_every=2",
                                           "trainer.max_nonfinite=7", run_dir=tmp_path / "run")
    assert status == 2
    assert "no checkpoint of this run has finite weights and validation metrics" in err
    assert "Last good checkpoint: /" not in err and "last good checkpoint: /" not in out
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"step_0000000{s}.pt" for s in (2, 4, 6)]  # no best.pt
    assert all(load_checkpoint(p)["last_good"] is None for p in checkpoints.iterdir())


def test_the_newest_good_checkpoint_is_never_rotated_away(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=1)
    state = {"identity": {"model": "vae", "model_config": {}, "data": {}}, "model": {}, "step": 0}
    for step in (10, 20, 30):  # step 10 was the last good one
        manager.save({**state, "step": step}, step, best=False, keep_also="step_00000010.pt")
    assert [p.name for p in manager.step_files()] == ["step_00000010.pt", "step_00000030.pt"]


def test_a_full_disk_ends_in_one_line_and_keeps_earlier_checkpoints(tmp_path: Path, shared_data: Path,
                                                                    monkeypatch) -> None:
    real_save, saves = torch.save, []

    def fills_the_disk(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # generator states gathered in memory, not a file
            return real_save(obj, f, *args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"half")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint_module.torch, "save", fills_the_disk)
    status, out, err = gentrain_in_process(*QUICK, run_dir=tmp_path / "run")
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"gentrain: error: could not write checkpoint {tmp_path / 'run' / 'checkpoints' / 'step_00000006.pt'} "
        f"(No space left on device); earlier checkpoints are intact"]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000003.pt", for_training=True)["step"] == 3
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_a_checkpoint_missing_keys_is_refused(run_copy: Path, tmp_path: Path) -> None:
    path = run_copy / "checkpoints" / "step_00000006.pt"
    state = torch.load(path, weights_only=True)
    del state["optimizers"], state["identity"]["data"]
    torch.save(state, path)
    (run_copy / "checkpoints" / "step_00000003.pt").unlink()
    line = one_error_line(gentrain_in_process(f"trainer.resume={run_copy}"))
    assert "step_00000006.pt is damaged or incomplete: optimizers, identity.data missing" in line
    with pytest.raises(CheckpointError, match="identity.data missing"):
        load_checkpoint(path)


# --- signals: one line, 128 + signal, nothing saved is touched ---------------------------------------------------


def test_ctrl_c_during_the_final_evaluation(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    # The final test pass: the importance-weighted bound with k=100 on all 10,000 test images takes seconds.
    process = start_cli("model.arch=mlp", "trainer.max_steps=2", "trainer.eval_every=0",
                        "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    for line in process.stdout:
        if "step 2: val" in line:  # validated and saved: the test pass starts now
            break
    time.sleep(0.5)
    before = snapshot(run_dir / "checkpoints")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    stopped = [line for line in output.splitlines() if line.startswith("gentrain: ")]
    assert len(stopped) == 1 and "stopped by SIGINT during the final test evaluation" in stopped[0], output
    assert "Traceback" not in output and "gentrain-eval run=" in stopped[0]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert snapshot(run_dir / "checkpoints") == before and not (run_dir / "metrics.json").exists()


def test_sigterm_during_gentrain_eval(run_copy: Path, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gentrain-eval"), f"run={run_copy}", "model.iw_samples=5000",
         f"dataset.root={SHARED_DATA}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "evaluating" in line:  # the long bound starts
            break
    time.sleep(0.5)
    before = snapshot(run_copy)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert output.strip().splitlines()[-1] == "gentrain-eval: stopped by SIGTERM" and "Traceback" not in output
    assert snapshot(run_copy) == before


# --- gentrain-sample / gentrain-eval on a run they cannot write to -----------------------------------------------


def test_sample_and_eval_into_an_unwritable_run(run_copy: Path, tmp_path: Path) -> None:
    for name in ("samples", "eval"):
        shutil.rmtree(run_copy / name, ignore_errors=True)
        (run_copy / name).write_text("not a folder")  # nothing can be created under it, even by root
    for command, main, extra in (("gentrain-sample", cli_sample.main, ["n=2"]), ("gentrain-eval", cli_eval.main, [])):
        line = one_error_line(command_in_process(main, f"run={run_copy}", *extra))
        assert line.startswith(f"{command}: error: cannot write") and "out=<folder>" in line
        out = tmp_path / f"out-{command}"
        status, _, err = command_in_process(main, f"run={run_copy}", *extra, f"out={out}")
        assert status == 0, err
        assert any(out.iterdir())


@pytest.mark.parametrize("argument, message", [
    ("n=abc", "could not be converted to Integer"),
    ("n=0", "n must be between 1 and 4096, got 0"),
    ("seed=-3", "seed must be between 0 and"),
    ("name=../../escape", "name must be a file name"),
    ("complete=bottom", "complete"),
    ("seed=x", "Value 'x' of type 'str' could not be converted to Integer; full_key: seed"),  # no type details
])
def test_bad_sample_options_get_one_line(finished_run: Path, argument: str, message: str) -> None:
    line = one_error_line(command_in_process(cli_sample.main, f"run={finished_run}", argument))
    assert line.startswith("gentrain-sample: error: ") and line.count("gentrain-sample") == 1 and message in line
    assert "object_type" not in line and "reference_type" not in line
