"""Files gentrain writes: complete or absent, never through a link, never over a file it did not make unless
told (overwrite=true), and a run's YAML read within bounds. The README's "Files and folders gentrain writes".

Runs are made once by the real command; each test works on a copy and checks that nothing outside was touched.
"""

from __future__ import annotations

import errno
import io
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO, command_in_process, gentrain_in_process
# finished_run and run_copy are fixtures
from test_run_directory import QUICK, finished_run, one_error_line, run_copy, snapshot  # noqa: F401

import gentrain.files as files_module
from gentrain import cli_eval, cli_sample
from gentrain.errors import RunDirectoryError
from gentrain.files import FileExists, write_file
from gentrain.rundir import MAX_YAML_NODES


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# --- the one way gentrain writes a file ---------------------------------------------------------------------
def test_a_file_is_complete_or_absent_never_through_a_link_never_over_another(tmp_path: Path) -> None:
    folder, outside = tmp_path / "run", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    theirs = outside / "theirs.txt"
    theirs.write_text("theirs")
    (folder / "a.png").symlink_to(theirs)
    write_file(folder / "a.png", b"new", root=folder)  # the link is replaced, its target untouched
    assert theirs.read_text() == "theirs" and not (folder / "a.png").is_symlink()
    assert (folder / "a.png").read_bytes() == b"new"

    (folder / "samples").symlink_to(outside)
    with pytest.raises(RunDirectoryError, match="samples is a symbolic link"):
        write_file(folder / "samples" / "grid.png", b"x", root=folder)
    assert sorted(p.name for p in outside.iterdir()) == ["theirs.txt"]

    (folder / "mine.txt").write_text("mine")
    with pytest.raises(FileExists):
        write_file(folder / "mine.txt", b"x", root=folder, replace=False)
    (folder / "dangling").symlink_to(outside / "nothing-yet")
    with pytest.raises(FileExists):
        write_file(folder / "dangling", b"x", root=folder, replace=False)
    assert (folder / "mine.txt").read_text() == "mine" and not (outside / "nothing-yet").exists()

    for error in (KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")):
        def half_written(f: io.BufferedWriter, error: BaseException = error) -> None:
            f.write(b"\x89PNG partial")
            raise error

        with pytest.raises(type(error)):
            write_file(folder / "c.png", half_written, root=folder)
        assert not (folder / "c.png").exists() and temporaries(folder) == []


def test_every_file_is_written_through_files_py() -> None:
    """The class, not the examples: no module writes a file by another route. One that must (a lock, an array
    written in place and published by renaming its folder) is listed here with its reason."""
    direct = re.compile(r"\.write_text\(|\.write_bytes\(|save_image\(|np\.savez?(_compressed)?\(|torch\.save\(|"
                        r"open\([^)]*['\"][wax]b?\+?['\"]|fdopen\([^)]*['\"][wax]|FileHandler\(|memmap\(")
    allowed = {
        ("files.py", ""): "the one place",
        ("logger.py", "save_image(image, f,"): "into the file write_file opened",
        ("checkpoint.py", "torch.save(own, sent)"): "into memory, to gather generator states",
        ("data/cache.py", 'open(lock_path, "a")'): "a lock file: never written",
    }
    found = []
    for path in sorted((REPO / "src" / "gentrain").rglob("*.py")):
        name = path.relative_to(REPO / "src" / "gentrain").as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not direct.search(line) or "write_file(" in line:
                continue
            if not any(name == file and snippet in line for file, snippet in allowed):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)


# --- run directories: links inside are never followed -------------------------------------------------------
@pytest.mark.parametrize("link", ["train.log", "samples", "checkpoints"])
def test_a_resume_never_writes_through_a_link_in_the_run(run_copy: Path, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    target = outside / "target"
    if (run_copy / link).is_dir():
        shutil.copytree(run_copy / link, target)
        shutil.rmtree(run_copy / link)
    else:
        outside.mkdir()
        shutil.copy(run_copy / link, target)
        (run_copy / link).unlink()
    (run_copy / link).symlink_to(target)
    before, kept = snapshot(outside), snapshot(run_copy)
    line = one_error_line(gentrain_in_process(f"trainer.resume={run_copy}", "trainer.max_steps=9"))
    assert f"{run_copy / link} is a symbolic link" in line
    assert snapshot(outside) == before and snapshot(run_copy) == kept


def test_a_linked_sample_file_is_replaced_never_written_through(run_copy: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(b"theirs")
    (run_copy / "samples" / "step_000009.png").symlink_to(theirs)  # the grid the resumed run writes at step 9
    status, out, err = gentrain_in_process(f"trainer.resume={run_copy}", "trainer.max_steps=9")
    assert status == 0, out + err
    assert theirs.read_bytes() == b"theirs" and not (run_copy / "samples" / "step_000009.png").is_symlink()

    name = run_copy / "samples" / "samples_step00000009_seed0.png"
    name.symlink_to(theirs)
    line = one_error_line(command_in_process(cli_sample.main, f"run={run_copy}", "n=2"))
    assert f"{name} already exists" in line and "overwrite=true" in line
    assert command_in_process(cli_sample.main, f"run={run_copy}", "n=2", "overwrite=true")[0] == 0
    assert theirs.read_bytes() == b"theirs" and not name.is_symlink() and name.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("command, main, folder", [("gentrain-sample", cli_sample.main, "samples"),
                                                   ("gentrain-eval", cli_eval.main, "eval")])
def test_sample_and_eval_refuse_a_linked_output_folder_in_the_run(run_copy: Path, tmp_path: Path, command: str,
                                                                   main, folder: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run_copy / folder, ignore_errors=True)
    (run_copy / folder).symlink_to(outside)
    line = one_error_line(command_in_process(main, f"run={run_copy}", "n=2" if folder == "samples" else "seed=1"))
    assert line.startswith(f"{command}: error: cannot write {run_copy / folder}") and "symbolic link" in line
    assert list(outside.iterdir()) == []


# --- output files the user may already have -----------------------------------------------------------------
def test_existing_outputs_are_kept_unless_overwrite(run_copy: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "samples_step00000006_seed0.png").write_bytes(b"my picture")
    before = snapshot(mine)
    line = one_error_line(command_in_process(cli_sample.main, f"run={run_copy}", "n=2", f"out={mine}"))
    assert "samples_step00000006_seed0.png already exists" in line and snapshot(mine) == before

    assert command_in_process(cli_eval.main, f"run={run_copy}")[0] == 0
    evaluated = snapshot(run_copy / "eval")
    line = one_error_line(command_in_process(cli_eval.main, f"run={run_copy}", "seed=5"))
    assert "metrics.json and 1 more already exist (an earlier evaluation)" in line
    assert snapshot(run_copy / "eval") == evaluated
    assert command_in_process(cli_eval.main, f"run={run_copy}", "seed=5", "overwrite=true")[0] == 0
    assert len(list((run_copy / "eval").glob("events.out.tfevents.*"))) == 1  # the earlier curves are gone


def test_interrupted_or_full_disk_writes_leave_no_partial_file(run_copy: Path, monkeypatch) -> None:
    real_fdopen = files_module.os.fdopen

    def failing(error: BaseException):
        class Failing(io.BufferedWriter):
            def write(self, data):  # part of the bytes, then the error
                super().write(bytes(data)[:33])
                raise error

        def fdopen(fd: int, mode: str = "r", *args, **kwargs):
            return (Failing(real_fdopen(fd, "wb", buffering=0)) if "w" in mode
                    else real_fdopen(fd, mode, *args, **kwargs))
        return fdopen

    samples = run_copy / "samples"
    before = snapshot(samples)
    monkeypatch.setattr(files_module.os, "fdopen", failing(KeyboardInterrupt()))
    status, _, err = command_in_process(cli_sample.main, f"run={run_copy}", "n=2", "name=ctrl-c")
    assert status == 130 and "stopped by SIGINT" in err
    monkeypatch.setattr(files_module.os, "fdopen", failing(OSError(errno.ENOSPC, "No space left on device")))
    line = one_error_line(command_in_process(cli_eval.main, f"run={run_copy}"))
    assert "No space left on device" in line
    assert snapshot(samples) == before and temporaries(run_copy) == []
    assert not (run_copy / "eval" / "metrics.json").exists()


# --- reading a run's YAML is bounded ------------------------------------------------------------------------
def test_a_yaml_alias_bomb_or_a_huge_config_is_refused_at_once(run_copy: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]  # 9^12 values
    config = run_copy / ".hydra" / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert len(config.read_bytes()) < 1000
    started = time.monotonic()
    line = one_error_line(command_in_process(cli_sample.main, f"run={run_copy}", "n=2"))
    assert f"expands to more than {MAX_YAML_NODES:,} values" in line and time.monotonic() - started < 10
    config.write_text("a: [" + "1, " * 2_000_000 + "1]\n")
    assert "larger than 4 MB" in one_error_line(command_in_process(cli_sample.main, f"run={run_copy}", "n=2"))


def test_a_run_never_replaces_files_it_did_not_write(tmp_path: Path) -> None:
    """hydra.run.dir=<a folder of the user's> holding a metrics.json (or train.log, samples/ ...) that no run
    wrote: a fresh run there would replace or append to them; it stops first, and the folder stays as it
    was."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"my": "numbers"}')
    (folder / "notes.txt").write_text("kept")
    before = snapshot(folder)
    line = one_error_line(gentrain_in_process(*QUICK, run_dir=folder))
    assert f"{folder} already has metrics.json, not from a gentrain run" in line
    assert snapshot(folder) == before


def test_a_sweep_never_replaces_summaries_it_did_not_write(tmp_path: Path) -> None:
    """hydra.sweep.dir=<a folder of the user's> with a summary.md of their own: refused before any job; a
    folder that an earlier gentrain sweep filled is continued as before."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "summary.md").write_text("my table")
    before = snapshot(folder)
    status, out, err = gentrain_in_process("-m", *QUICK, "seed=1,2", f"hydra.sweep.dir={folder}")
    assert status == 2 and f"{folder} already has summary.md, not from a gentrain sweep" in err, out + err
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == ["summary.md"]
