"""gentrain's Hydra launcher: Hydra instantiates plugins from the hydra_plugins package only, and imports every
module in it at start-up, so this one stays light and defines the launcher only when hydra-submitit-launcher is
installed (the cluster extra). The code is gentrain/slurm.py."""

from importlib.util import find_spec

if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from gentrain.slurm import ResumingSlurmLauncher

    class SlurmLauncher(ResumingSlurmLauncher):
        """`hydra/launcher=slurm` (configs/hydra/launcher/slurm.yaml): jobs that hit the time limit continue."""
