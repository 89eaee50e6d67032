"""The run's lock and the cache's build lock: no forked worker keeps them or outlives its run, so a
run killed with `kill -9` while it decodes blocks nobody; anything else at the lock's path is refused
in one line."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ONE_THREAD_ENV, gentrain_in_process
from synthetic import write_image_folder
from test_run_directory import QUICK, one_error_line

from gentrain.errors import RunDirectoryError
from gentrain.runlock import LOCK_FILE, RunLock

# A run that takes its lock, then decodes a folder in two slow worker processes that note their pid.
DECODING_RUN = """
import os, sys, time
from pathlib import Path
from PIL import Image
import gentrain.data.images as images
import gentrain.forked as forked
from gentrain.composition import load_dataset
from gentrain.data.schemas import FolderConfig
from gentrain.runlock import RunLock

run_dir, folder, pids = map(Path, sys.argv[1:4])
if sys.argv[4] == "without prctl":  # as on macOS: a thread in each worker watches for its parent
    forked._kernel_kills_orphans = lambda: False
resize = Image.Image.resize

def noted_and_slow(self, *args, **kwargs):
    (pids / str(os.getpid())).touch()
    time.sleep(0.2)
    return resize(self, *args, **kwargs)

Image.Image.resize = noted_and_slow
images.available_cores = lambda: 2
images.DECODE_CHUNK = 1
RunLock(run_dir).acquire()
load_dataset(FolderConfig(path=str(folder), image_size=8))
"""


def gone(pid: int) -> bool:
    """Ended (a zombie counts: a container's init may never reap the orphans it inherits)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("death_signal", ["prctl", "without prctl"])
def test_kill_9_while_decoding_leaves_no_worker_and_no_held_lock(tmp_path: Path, death_signal) -> None:
    folder = write_image_folder(tmp_path / "images", count=40)
    run_dir, pids, script = tmp_path / "run", tmp_path / "pids", tmp_path / "decoding_run.py"
    run_dir.mkdir()
    pids.mkdir()
    script.write_text(DECODING_RUN)
    run = subprocess.Popen([sys.executable, str(script), str(run_dir), str(folder), str(pids),
                            death_signal], env={**os.environ, **ONE_THREAD_ENV})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2:
            assert run.poll() is None and time.monotonic() < deadline, "no decoding workers started"
            time.sleep(0.05)
            workers = [int(p.name) for p in pids.iterdir() if int(p.name) != run.pid]
        run_lock, (build_lock,) = run_dir / LOCK_FILE, (folder / ".gentrain_cache").glob("*.lock")
        locks = {os.path.realpath(run_lock), os.path.realpath(build_lock)}
        for pid in workers:
            opened = {os.path.realpath(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
            assert not locks & opened, f"decoding worker {pid} holds {locks & opened}"

        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        resumed = RunLock(run_dir)  # `trainer.resume=auto` of the same command starts at once
        resumed.acquire()
        resumed.release()
        with open(build_lock, "a") as handle:  # and another run on the same data
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        deadline = time.monotonic() + 10
        while not all(map(gone, workers)):
            alive = [pid for pid in workers if not gone(pid)]
            assert time.monotonic() < deadline, f"workers outlived their run: {alive}"
            time.sleep(0.05)
    finally:
        run.kill()
        for pid in workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["directory", "symbolic link", "named pipe", "file we may not open"])
def test_anything_but_a_lock_file_at_its_path_is_refused(tmp_path: Path, monkeypatch, kind) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "precious.txt"
    lock = run_dir / LOCK_FILE
    run_dir.mkdir()
    elsewhere.write_text("precious")
    if kind == "directory":
        lock.mkdir()
    elif kind == "symbolic link":
        lock.symlink_to(elsewhere)
    elif kind == "named pipe":
        os.mkfifo(lock)
    else:
        lock.write_text("")
        lock.chmod(0)
        if os.geteuid() == 0:  # root opens it anyway: what anyone else gets is simulated
            real_open = os.open

            def refused(path, *args, **kwargs):
                if Path(path) == lock:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                return real_open(path, *args, **kwargs)

            monkeypatch.setattr(os, "open", refused)
    with pytest.raises(RunDirectoryError) as refusal:
        RunLock(run_dir).acquire()
    message = str(refusal.value)
    assert message.startswith(str(lock)) and "delete it" in message and "\n" not in message
    assert elsewhere.read_text() == "precious"  # never written through the link


def test_a_lock_path_that_is_a_directory_stops_the_command_in_one_line(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).mkdir()
    line = one_error_line(gentrain_in_process(*QUICK, run_dir=tmp_path))
    assert f"{tmp_path / LOCK_FILE} is a directory" in line and "delete it" in line
