"""The `gentrain` command: the Hydra entry point. One run's body is run.py's; this file turns the command line
into Hydra's arguments (resumes, torchrun ranks), answers --help and --version quickly, and keeps the exit
contract.

Exit statuses are errors.py's contract: a user error (a bad value, Hydra's own composition errors, missing
data, a run directory in use...) prints one line on stderr and exits with 2; a signal exits with 128 + its
number; a bug prints its traceback and exits with 1. HYDRA_FULL_ERROR=1 shows the traceback of user errors
too.

A run directory is data (rundir.py): the run locks it first, and writes nothing into it (no .hydra/, train.log
or status.json) until every check has passed, so a refused command leaves an existing run byte-identical. In a
sweep (`-m`) a failing job is recorded in its status.json and the other jobs still run (callbacks.py).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from gentrain import distributed
from gentrain.errors import (
    USER_FULL_ERROR, GentrainError, RunDirectoryError, exit_statuses, full_errors, is_user_error, one_line,
)

log = logging.getLogger("gentrain")

# The error that ended a single run, raised again once Hydra has returned: raised inside the task, Hydra would
# add a line of its own ("Error executing job with overrides: ...") to our one-line message.
_failure: list[BaseException] = []


def _task(cfg: Any) -> float:
    """Hydra's task: one run, or one job of a sweep (whose failure is recorded and does not stop the
    others)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from gentrain.rundir import LOG_FORMAT
    from gentrain.run import run_in_directory

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    log_format = LOG_FORMAT
    if sweep:  # each line names its job
        log_format = LOG_FORMAT.replace("][%(name)s", f"][job {hydra_cfg.job.num}][%(name)s")
    if sweep:  # parallel jobs share a console: each line says whose it is
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(log_format))
    try:
        result = run_in_directory(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg, sweep=sweep,
                                  job=hydra_cfg.job.num if sweep else None, log_format=log_format,
                                  parallel_jobs=_parallel_jobs(hydra_cfg) if sweep else 1)
    except Exception as err:
        if not sweep:
            _failure.append(err)
            return float("nan")
        if full_errors():
            raise
        if not is_user_error(err):
            log.exception("job failed: %s", one_line(err))  # keep the traceback in the job's log
        return float("nan")  # the other jobs of the sweep still run
    return float(result["val"].get(result["main_metric"], float("nan")))


def _parallel_jobs(hydra_cfg: Any) -> int:
    """How many jobs of this sweep run at once on this machine (joblib's n_jobs; 1 for the other
    launchers)."""
    n_jobs = hydra_cfg.launcher.get("n_jobs") if "launcher" in hydra_cfg else None
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    from gentrain.runtime import available_cores

    return n_jobs if n_jobs > 0 else max(1, available_cores() + 1 + n_jobs)  # joblib: -1 = every core


def quote_override(value: str) -> str:
    """A value in Hydra's override grammar whatever characters it holds (paths with '=', ',' or spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def resume_arguments(arguments: list[str], *, sweep: bool = False) -> list[str]:
    """`trainer.resume=<run dir or checkpoint>` continues that run in its own directory with its own config:
    the run's saved overrides come first (only gentrain's own settings: rundir.replayable_overrides) less the
    keys given again, then those given now, then its directory. The command and the Python API (api.train)
    both go through it."""
    from gentrain.rundir import replayable_overrides

    given = [a for a in arguments if a.startswith("trainer.resume=")]
    source = _unquoted(given[-1].split("=", 1)[1]) if given else None
    if source in (None, "", "auto", "null"):
        return arguments
    if sweep:
        raise RunDirectoryError("a sweep cannot resume one run; use trainer.resume=auto with a fixed "
                                "hydra.sweep.dir")
    path = Path(source).expanduser().absolute()
    run_dir = path if path.is_dir() else path.parent.parent
    if not path.exists() or not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise RunDirectoryError(f"trainer.resume={source} is not a gentrain run directory or one of its "
                                f"checkpoints (no {run_dir / '.hydra' / 'overrides.yaml'})")
    rest = [a for a in arguments if not a.startswith("trainer.resume=")]
    given_now = {a.split("=", 1)[0] for a in rest if "=" in a}
    # A key given again now appears once, with its new value: the run's overrides.yaml stays a clean command
    saved = [o for o in replayable_overrides(run_dir)
             if not o.startswith("trainer.resume=") and o.split("=", 1)[0] not in given_now]
    here = [] if any(a.startswith("hydra.run.dir=") for a in arguments) \
        else [f"hydra.run.dir={quote_override(str(run_dir))}"]
    return [*saved, *rest, f"trainer.resume={quote_override(str(path))}", *here]


def check_values_first(arguments: list[str]) -> None:
    """A single run's config is composed and checked once before Hydra starts the run: a bad value costs one
    composition (a fraction of a second) and leaves no run directory behind. Sweeps check each job."""
    if any(a.startswith("-") for a in arguments):  # -m, --cfg, --info, -sc ...: Hydra's own modes
        return
    from gentrain.composition import compose, to_config

    to_config(compose([a for a in arguments if "=" in a]))


def _rank_arguments(argv: list[str]) -> list[str]:
    """Under torchrun, only rank 0 writes the run's files and log; the others print warnings only."""
    parallel = distributed.context()
    if parallel.enabled and ("-m" in argv or "--multirun" in argv):
        raise GentrainError("sweeps (-m) cannot run under torchrun; launch each job with torchrun instead")
    if parallel.is_main:
        return argv
    return [*argv, "hydra/job_logging=disabled"]


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Let Hydra's exceptions reach exit_statuses() instead of Hydra printing them and exiting with 1."""
    from gentrain.run_names import environment

    with environment({USER_FULL_ERROR: "1" if full_errors() else "0", "HYDRA_FULL_ERROR": "1"}):
        yield


# Config folders that are not choices for users: Hydra's own, and trainer_model/, which config.yaml picks by
# itself (<trainer>_<model>, e.g. the VAE's smaller IW bound under trainer=debug).
INTERNAL_GROUPS = ("hydra", "trainer_model", "__pycache__")


def _help(arguments: list[str]) -> str:
    """Hydra's help template (configs/config.yaml, hydra.help.template) filled in by listing the config
    folders, instead of Hydra's own listing, which copies every stored config once per group option (seconds
    of CPU)."""
    import string
    from importlib import resources

    import yaml
    from omegaconf import OmegaConf

    from gentrain.composition import CONFIG_MODULE, compose

    configs = resources.files(CONFIG_MODULE)
    template = yaml.safe_load((configs / "config.yaml").read_text())["hydra"]["help"]["template"]
    groups = {entry.name: sorted(option.name.removesuffix(".yaml") for option in entry.iterdir()
                                 if option.name.endswith(".yaml"))
              for entry in configs.iterdir() if entry.is_dir() and entry.name not in INTERNAL_GROUPS}
    listing = "\n".join(f"{group}: {', '.join(options)}"
                        for group, options in sorted(groups.items()) if options)
    config = OmegaConf.to_yaml(compose([a for a in arguments if "=" in a and not a.startswith("-")]))
    return string.Template(template).safe_substitute(APP_CONFIG_GROUPS=listing, CONFIG=config)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("gentrain")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main() -> None:
    import hydra

    from gentrain import run_names
    from gentrain.composition import CONFIG_MODULE, register

    if sys.argv[1:2] in (["--version"], ["-V"]):
        print(f"gentrain {version()}")
        return
    with exit_statuses("gentrain"):
        if {"--help", "-h"} & set(sys.argv[1:]) and "--hydra-help" not in sys.argv:
            print(_help(sys.argv[1:]))
            return
        launch = datetime.datetime.now()
        run_names.set_launch_time(launch)
        register()
        distributed.init_from_environment()
        try:
            sweep = "-m" in sys.argv or "--multirun" in sys.argv
            sys.argv = _rank_arguments([sys.argv[0], *resume_arguments(sys.argv[1:], sweep=sweep)])
            check_values_first(sys.argv[1:])
            for _ in range(60):
                try:
                    with _hydra_raises(), run_names.fixed_for_this_command(sys.argv[1:]):
                        hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}",
                                   config_name="config")(_task)()
                    break
                except run_names.LaunchTaken as taken:  # a sweep of the same second has it
                    launch += datetime.timedelta(seconds=1)
                    run_names.set_launch_time(launch)
                    log.info("%s: this sweep takes the next second's directory", taken)
            else:
                raise RunDirectoryError("the sweep directories of the last 60 seconds are all taken: choose "
                                        "hydra.sweep.dir=...")
            if _failure:
                raise _failure.pop()
        finally:
            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
