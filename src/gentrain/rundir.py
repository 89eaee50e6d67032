"""A run directory is data: reading it never runs or instantiates anything it names, one process at a time
works in it, and a command that is refused leaves it byte-identical.

- `read_yaml` / `read_json` / `replayable_overrides`: the only ways gentrain reads a run's text files. YAML
tags
  (`!!python/object...`) are refused, and a resume replays only overrides of gentrain's own settings.
- `RunLock` (runlock.py): one process at a time; a second one on the same directory stops with one line.
- `RunDirectory`: the lock, the clean-up of temporaries a killed process left, and the moment a run *commits*:
  until then nothing is written (log records wait in memory); `commit()` writes `.hydra/` and starts
  `train.log`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import socket
from pathlib import Path
from typing import Any, Optional

import yaml

from gentrain import files
from gentrain.errors import RunDirectoryError
from gentrain.run_names import LaunchTaken
from gentrain.runlock import RunLock, process_alive

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
WRITE_CHECK = ".gentrain-write-check-"  # + pid: the probe of require_writable
SWEEP_MARKER = ".gentrain-sweep"  # a sweep directory named by the launch time belongs to the command that made it
RUN_FOLDERS = (".hydra", "checkpoints", "samples", "eval")  # what gentrain makes inside a run directory
# The settings a saved override may set when a run is resumed: gentrain's schema, never hydra.* or _target_.
REPLAYED_ROOTS = ("model", "dataset", "trainer", "metrics", "seed", "name", "experiment")
CONFIG_GROUPS = ("model", "dataset", "trainer", "experiment")


# --- reading
# ----------------------------------------------------------------------------------------------------
MAX_TEXT_BYTES = 4 << 20  # a run's YAML and JSON files are a few kilobytes
MAX_YAML_NODES = 100_000  # values a run's YAML may expand to, aliases counted each time they are used


def read_text(path: Path) -> str:
    """A run's text file, refused when it is larger than any file gentrain writes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
        if len(raw) > MAX_TEXT_BYTES:
            raise RunDirectoryError(f"{path} is larger than {MAX_TEXT_BYTES >> 20} MB: not a file gentrain wrote, "
                                    f"refusing to read it")
        return raw.decode()
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirectoryError(f"cannot read {path} ({getattr(err, 'strerror', None) or err})") from None


def expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """How many values a YAML node stands for once its aliases are expanded (each shared node counted once per
    use, computed once): a few hundred bytes of nested aliases can stand for billions."""
    key = id(node)
    if sizes.get(key) == -1:  # a node that contains itself expands without end
        return MAX_YAML_NODES + 1
    if key not in sizes:
        sizes[key] = -1
        children = node.value if isinstance(node.value, list) else []
        total = 1
        for child in children:
            for part in child if isinstance(child, tuple) else (child,):
                total += expanded_size(part, sizes)
                if total > MAX_YAML_NODES:
                    break
        sizes[key] = total
    return sizes[key]


def read_yaml(path: Path) -> Any:
    """Plain YAML data: mappings, lists, strings, numbers. A tag that would build an object is refused, and so
    are files larger, or expanding to more values, than any that gentrain writes."""
    from omegaconf._utils import get_yaml_loader  # OmegaConf's safe loader (YAML 1.2 floats)

    loader = get_yaml_loader()(read_text(path))
    try:
        node = loader.get_single_node()
        if node is not None and expanded_size(node, {}) > MAX_YAML_NODES:
            raise RunDirectoryError(f"{path} expands to more than {MAX_YAML_NODES:,} values (aliases?): "
                                    f"not a file gentrain wrote, refusing to read it")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise RunDirectoryError(f"{path} is not plain YAML data, refusing to use it ({reason})") from None
    except RecursionError:
        raise RunDirectoryError(f"{path} nests too deeply: not a file gentrain wrote, refusing to read it") from None
    finally:
        loader.dispose()


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except (ValueError, RecursionError) as err:
        raise RunDirectoryError(f"cannot read {path} ({err})") from None


def replayable_overrides(run_dir: Path) -> list[str]:
    """The run's saved command-line overrides, each checked to set only gentrain's own settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    path = run_dir / ".hydra" / "overrides.yaml"
    saved = read_yaml(path)
    if saved is None:
        return []
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise RunDirectoryError(f"{path} is not a list of overrides")
    parser = OverridesParser.create()
    for text in saved:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as err:
            raise RunDirectoryError(f"{path}: cannot parse the saved override {text!r} ({err})") from None
        key = override.key_or_group
        root = re.split(r"[./]", key)[0]
        plain = override.type is OverrideType.CHANGE and override.package is None and not override.is_sweep_override()
        group_choice = key in CONFIG_GROUPS and not re.fullmatch(r"\w+", str(override.value()))
        if root not in REPLAYED_ROOTS or not plain or "_target_" in text or group_choice:
            raise RunDirectoryError(
                f"{path} holds {text!r}, which is not a gentrain setting (a run directory may only set "
                f"{', '.join(REPLAYED_ROOTS)}); refusing to resume from it"
            )
    return saved


class ConsoleFilter(logging.Filter):
    """Drops records logged with extra={"console": False}: lines for train.log that the console already shows
    in another form (a user error printed to stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the half-written temporaries (.<name>.<pid>.tmp) of processes that no longer run."""
    folders = [run_dir, *(run_dir / name for name in RUN_FOLDERS)]
    return files.remove_stale_temporaries(folders, process_alive)


# --- one run in its directory
# ---------------------------------------------------------------------------------
def require_writable(folder: Path, hint: str) -> Path:
    """Create `folder` and check that files can be written in it, before any work that would write there is
    done; `hint` says how to choose another (e.g. 'choose another with hydra.run.dir=...')."""
    probe = folder / f"{WRITE_CHECK}{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.unlink(missing_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
        probe.unlink()
    except OSError as err:
        raise RunDirectoryError(f"cannot write {folder} ({err.strerror or err}): {hint}") from None
    return folder


def holds_run(folder: Path) -> bool:
    """Whether a run left its files in `folder` (its config or checkpoints)."""
    return (folder / ".hydra" / "config.yaml").exists() or any((folder / "checkpoints").glob("*.pt"))


def foreign_files(folder: Path, *, sweep: bool = False) -> list[str]:
    """The names a run (or a `sweep`) writes that a folder holding none already has: someone else's files,
    which a fresh run or sweep there would replace or append to."""
    if sweep:
        if os.path.lexists(folder / SWEEP_MARKER) or any(holds_run(p) for p in folder.iterdir()
                                                         if p.is_dir()):
            return []  # a sweep's own directory, continued
        names: tuple[str, ...] = ("summary.csv", "summary.md", "multirun.yaml")
    else:
        names = (*RUN_FOLDERS, "train.log", "status.json", "metrics.json")
    return [name for name in names if os.path.lexists(folder / name)]


def refuse_run_files(folder: Path, option: str, *, itself: bool = True) -> None:
    """A chosen output folder must not be a run directory (unless `itself` may be: a training run resumes
    there), nor in a run's .hydra/ or checkpoints/: what the command writes there (metrics.json, TensorBoard
    events, images, a nested run) would overwrite or mix with the run's own files."""
    folder = Path(os.path.abspath(folder))
    for owner in (folder, *folder.parents) if itself else folder.parents:
        if not holds_run(owner):
            continue
        inside = folder.relative_to(owner).parts
        if not inside or inside[0] in (".hydra", "checkpoints"):
            where = "a run directory" if not inside else f"in the {inside[0]}/ folder of the run {owner}"
            raise RunDirectoryError(f"{option}={folder} is {where}: its files would be overwritten or mixed; "
                                    f"choose another folder with {option}=<folder>")
        return


def claim_sweep_directory(folder: Path) -> None:
    """A sweep directory named by the launch time holds one command's jobs: the first command claims it by
    creating its marker file (atomically); a command that finds it claimed, or filled by an older sweep,
    raises run_names.LaunchTaken instead of mixing its jobs and summary into it."""
    if any(p.name != SWEEP_MARKER and not p.name.startswith(WRITE_CHECK) for p in folder.iterdir()):
        raise LaunchTaken(folder)
    try:
        fd = os.open(folder / SWEEP_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise LaunchTaken(folder) from None
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    os.close(fd)


def refuse_links(run_dir: Path) -> None:
    """One line, before anything is written, when a folder or the log of the run is a symbolic link: what
    gentrain writes there would land wherever the link points (a downloaded run, or a hostile one)."""
    for name in (*RUN_FOLDERS, "train.log"):
        if (run_dir / name).is_symlink():
            raise RunDirectoryError(f"{run_dir / name} is a symbolic link: gentrain does not write through links "
                                    f"in a run directory (put a real one in its place)")


class RunDirectory:
    """The directory of one run, as the process that trains it sees it (see the module docstring).

    Only the writing process (rank 0 under torchrun) locks, cleans and writes; the others only read.
    """

    def __init__(self, path: Path, *, writer: bool = True, log_format: str = LOG_FORMAT):
        self.path = path
        self.writer = writer
        self.log_format = log_format
        self.committed = False
        self.had_run = self.holds_run()
        self._lock = RunLock(path)
        self._buffer: Optional[logging.handlers.MemoryHandler] = None
        self._file_handler: Optional[logging.Handler] = None

    def holds_run(self) -> bool:
        """Whether an earlier run left its files here (its config or checkpoints)."""
        return holds_run(self.path)

    def __enter__(self) -> "RunDirectory":
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            self.had_run = self.holds_run()  # again, now that no other process can start a run here
            try:
                refuse_links(self.path)
            except BaseException:
                self._lock.release()
                raise
            # Kept in memory until commit(), so that a refused run leaves train.log as it was.
            self._buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
            logging.getLogger().addHandler(self._buffer)
            removed = remove_stale_temporaries(self.path)
            if removed:
                log.info("removed %d temporary file(s) left by a killed process: %s", len(removed),
                         ", ".join(str(p.relative_to(self.path)) for p in removed))
        return self

    def commit(self, contents: dict[str, str]) -> None:
        """The run passed its checks: write `contents` (path in the run -> text, e.g. .hydra/config.yaml) and
        start train.log with everything logged so far."""
        if not self.writer or self.committed:
            return
        for name, text in contents.items():
            files.write_file(self.path / name, text, root=self.path)
        handler = logging.StreamHandler(files.open_append(self.path / "train.log", root=self.path))
        handler.setFormatter(logging.Formatter(self.log_format))
        root = logging.getLogger()
        root.addHandler(handler)
        if self._buffer is not None:
            for record in self._buffer.buffer:
                handler.handle(record)
            root.removeHandler(self._buffer)
            self._buffer = None
        self._file_handler = handler
        self.committed = True

    def record(self, status: str, **fields: Any) -> None:
        """status.json: how the run ended. Written only into a committed run."""
        if self.writer and self.committed:
            files.write_file(self.path / "status.json", json.dumps({"status": status, **fields}, indent=2) + "\n",
                             root=self.path)

    def __exit__(self, *exc: Any) -> None:
        root = logging.getLogger()
        for handler in (self._buffer, self._file_handler):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        if self._file_handler is not None:
            self._file_handler.stream.close()  # a StreamHandler leaves its stream open
        self._buffer = self._file_handler = None
        self._lock.release()
