"""gentrain's Hydra plugins, a launcher and a sweeper: Hydra instantiates plugins from the hydra_plugins
package only, and imports every module in it at start-up, so this one stays light and defines each plugin
only when the package it extends is installed (the cluster extra). The code is gentrain/slurm.py and
gentrain/optuna_sweeper.py."""

from importlib.util import find_spec
from typing import Any

if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from gentrain.slurm import ResumingSlurmLauncher

    class SlurmLauncher(ResumingSlurmLauncher):
        """`hydra/launcher=slurm` (configs/hydra/launcher/slurm.yaml): jobs that hit the time limit continue."""

if find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    class OptunaStudySweeper(OptunaSweeper):
        """`hydra/sweeper=optuna_study` (configs/hydra/sweeper/optuna_study.yaml): an Optuna search over a
        stored study that sweeps continue and share. Imports optuna only when a sweep starts."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            from gentrain.optuna_sweeper import StudySweeper

            self.sweeper = StudySweeper(*args, **kwargs)
