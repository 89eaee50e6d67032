"""Composition: every model x dataset pair composes, and bad configs fail with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from gentrain.composition import to_config
from gentrain.config import Config, TrainerConfig, problems
from gentrain.errors import ConfigError
from gentrain import registry

MODELS, DATASETS = registry.configs("model"), registry.configs("dataset")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_and_dataset_compose(model: str, dataset: str, tmp_path: Path) -> None:
    cfg = compose_config(f"model={model}", f"dataset={dataset}",
                         f"dataset.path={tmp_path}" if dataset == "folder" else "seed=0")
    config = to_config(cfg)
    assert isinstance(config, Config)
    assert type(config.model) is MODELS[model]
    assert type(config.dataset) is DATASETS[dataset]


NEEDS_FOLDERS = {"cyclegan_folders": ("dataset.a.path", "dataset.b.path")}  # presets for the user's own images


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment: str, tmp_path: Path) -> None:
    keys = NEEDS_FOLDERS.get(experiment, ())
    if keys:
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
        with pytest.raises(ConfigError, match=f"{keys[0]} is required"):
            to_config(compose_config(f"experiment={experiment}"))
    config = to_config(compose_config(f"experiment={experiment}", *(f"{key}={tmp_path}" for key in keys)))
    assert isinstance(config.trainer, TrainerConfig)
    # trainer=debug makes a quick run of the preset: the debug trainer's steps and batches, the preset's model
    # and data (the model's end-of-run budget shrinks as it does for every debug run)
    folders = [f"{key}={tmp_path}" for key in keys]
    debug = to_config(compose_config(f"experiment={experiment}", "trainer=debug", *folders))
    assert (debug.trainer.max_steps, debug.trainer.max_epochs, debug.trainer.batch_size) == (20, None, 8)
    budget = type(config.model).__dict__.get("evaluation_budget", frozenset())
    assert {k: v for k, v in vars(debug.model).items() if k not in budget} == \
        {k: v for k, v in vars(config.model).items() if k not in budget}
    assert debug.dataset == config.dataset


def test_the_readme_names_every_experiment() -> None:
    """The README's table of groups lists every preset, so that a user finds each one."""
    row = next(line for line in (CONFIGS.parent / "README.md").read_text().splitlines()
               if line.startswith("| `experiment` |"))
    missing = [p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if f"`{p.stem}`" not in row]
    assert not missing, f"README's experiment row lacks {missing}"


def test_yaml_values_reach_the_schema() -> None:
    config = to_config(compose_config("experiment=vae_binarized_mnist", "trainer.lr=3e-4"))
    assert config.model.arch.value == "mlp" and config.model.latent_dim == 20
    assert config.dataset.binarize.value == "dynamic"
    assert config.trainer.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.max_stpes=1", "Key 'max_stpes' not in 'TrainerConfig'"),
        ("model.latnet_dim=3", "Key 'latnet_dim' not in 'VAEConfig'"),
        ("trainer.lr=abc", "trainer.lr"),
        ("trainer.precision=fp8", "Invalid value 'fp8'"),
    ],
)
def test_bad_keys_and_values_fail_at_compose_time(override: str, expected: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(override)
    assert expected in str(err.value) + str(err.value.__cause__)


def test_missing_required_value_is_named() -> None:
    with pytest.raises(ConfigError, match="dataset.path is required"):
        to_config(compose_config("dataset=folder"))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "trainer.batch_size must be between 1 and 65536, got 0"),
        ("max_steps", -5, "trainer.max_steps must be >= 1 (or null), got -5"),
        ("ema_decay", 1.5, "trainer.ema_decay must be > 0 and < 1 (or null), got 1.5"),
    ],
)
def test_values_that_compose_but_cannot_work(field: str, value, message: str) -> None:
    cfg = TrainerConfig()
    setattr(cfg, field, value)
    assert [p for p in problems(cfg, "trainer.") if p.startswith(message)], list(problems(cfg, "trainer."))


def test_a_run_that_never_stops_is_refused() -> None:
    found = list(problems(TrainerConfig(max_steps=None, max_epochs=None, max_minutes=None), "trainer."))
    assert found and "never stop" in found[0]


# --- through the real command: one clear line, no traceback, non-zero exit ------------------------


def assert_clean_error(result, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for text in expected:
        assert text in output, output
    assert "Traceback" not in output, output


def test_cli_typo_names_the_key(tmp_path: Path) -> None:
    result = run_cli("trainer.max_stpes=1", cwd=tmp_path)
    assert_clean_error(result, "max_stpes")
    assert result.returncode == 2


def test_cli_wrong_type_names_the_key(tmp_path: Path) -> None:
    assert_clean_error(run_cli("trainer.lr=abc", cwd=tmp_path), "trainer.lr", "could not be converted")


def test_cli_unknown_option_lists_the_available_ones(tmp_path: Path) -> None:
    result = run_cli("model=nope", cwd=tmp_path)
    assert_clean_error(result, "Could not find 'model/nope'", "Available options in 'model'", "vae")


def test_cli_value_that_cannot_work_gives_one_line(tmp_path: Path) -> None:
    result = run_cli("trainer.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clean_error(result, "trainer.batch_size must be between 1 and 65536")
    assert result.returncode == 2


def test_cli_conditional_model_needs_labels(tmp_path: Path) -> None:
    from synthetic import write_image_folder

    images = write_image_folder(tmp_path / "faces", count=12)
    result = run_cli(
        "dataset=folder", f"dataset.path={images}", "dataset.image_size=32", "model.conditional=true",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )
    assert_clean_error(result, "model.conditional=true needs class labels")


def test_cli_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"  # a path through a regular file cannot be created, even by root
    blocker.write_text("")
    result = run_cli("trainer=debug", f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert_clean_error(result, f"cannot write {blocker / 'run'}", "hydra.run.dir=")
    assert result.returncode == 2


def test_cli_full_traceback_on_request(tmp_path: Path) -> None:
    result = run_cli("trainer.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                     env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_help_lists_groups_and_options(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("model: ", "dataset: celeba, cifar10, folder, mnist", "trainer: debug, default", "experiment: "):
        assert group in result.stdout
    assert "schema_" not in result.stdout
    assert "trainer_model" not in result.stdout  # picked by config.yaml itself, not a user's choice


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run_cli("dataset=cifar10", "trainer.batch_size=7", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.trainer.batch_size == 7
    assert "val_fraction" in printed.dataset and printed.model.arch == "conv"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_debug_trainer_composes_small_evaluation_budgets(model: str) -> None:
    """trainer=debug is a quick end-to-end check: every evaluation knob is small, the model's own ones too."""
    full, debug = (to_config(compose_config(f"model={model}", *extra)) for extra in ([], ["trainer=debug"]))
    assert debug.trainer.max_steps <= 20 and debug.trainer.eval_limit <= 200 and debug.trainer.num_samples <= 16
    assert debug.metrics.fid.num_samples <= 500 and debug.metrics.fid.classifier.steps <= 200
    assert debug.metrics.fid.kid_subset_size <= debug.metrics.fid.num_samples
    for key in getattr(MODELS[model], "evaluation_budget", ()):
        if key.endswith("tolerance"):  # looser is cheaper
            assert getattr(debug.model, key) >= getattr(full.model, key) * 10, key
        elif isinstance(getattr(full.model, key), (int, float)):  # a choice (a cheaper solver) has no size
            assert getattr(debug.model, key) <= getattr(full.model, key) / 10, key


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"gentrain {version('gentrain')}"
