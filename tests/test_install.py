"""The configs ship inside the package: a non-editable `pip install .` into another venv finds them."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

from conftest import REPO

import gentrain


def test_editable_checkout_finds_the_root_configs() -> None:
    import gentrain.configs

    assert Path(gentrain.configs.__file__).resolve().parent == REPO / "configs"
    assert Path(gentrain.__file__).resolve().is_relative_to(REPO / "src")


def test_non_editable_install_into_another_venv(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site_packages = Path(
        subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                text=True).strip()
    )
    # Borrow torch, hydra, ... from this environment instead of downloading them again; gentrain itself is
    # built from the checkout as a wheel and installed for real into the new venv.
    (site_packages / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-build-isolation", str(REPO)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    installed = site_packages / "gentrain" / "configs"
    assert (installed / "config.yaml").exists() and (installed / "model" / "vae.yaml").exists()
    assert (site_packages / "hydra_plugins" / "gentrain_launcher" / "__init__.py").exists()  # hydra/launcher=slurm
    # pyproject.toml lists the packages by hand (the configs live outside src/): a new sub-package must be
    # there
    packages = sorted(p.parent.relative_to(REPO / "src") for p in (REPO / "src").rglob("__init__.py")
                      if "egg-info" not in str(p) and "__pycache__" not in str(p))
    missing = [str(p) for p in packages if not (site_packages / p / "__init__.py").exists()]
    assert missing == [], f"not installed (list them in pyproject.toml's [tool.setuptools]): {missing}"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    located = subprocess.run([python, "-c", "import gentrain.configs as c; print(c.__file__)"], cwd=tmp_path,
                             env=env, capture_output=True, text=True)
    assert located.stdout.strip() == str(installed / "__init__.py")  # the installed copy, not the checkout
    result = subprocess.run([env_dir / "bin" / "gentrain", "model=vae", "dataset=cifar10", "--cfg", "job"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "val_fraction: 0.1" in result.stdout and "arch: conv" in result.stdout
