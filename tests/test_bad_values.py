"""Every bad value gets one line naming its key and exit status 2, before any data is read.

The table is built from the schemas themselves: every field of every schema (the top-level config, the trainer,
the metrics, each model's and each dataset's) gets the values its rule refuses (wrong sign, zero, beyond the
bounds, an absurd size, an even kernel, a missing path...) and a value of the wrong type.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import compose_config, gentrain_in_process, run_cli
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from synthetic import write_image_folder

import gentrain.run
from gentrain.composition import to_config
from gentrain.config import Config, Rule, problems
from gentrain.errors import one_line
from gentrain import registry

NO_SUCH_PATH = "/nonexistent/gentrain-test-path"


def schema_keys(schema: Any, prefix: str) -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(full key, field, default) for every leaf field of a schema instance, nested schemas included."""
    for f in dataclasses.fields(schema):
        value = getattr(schema, f.name)
        if dataclasses.is_dataclass(value):
            yield from schema_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def refused_values(f: dataclasses.Field, default: Any) -> list[str]:
    """Values the field's rule refuses, and one of the wrong type, as command-line literals."""
    rule: Rule = f.metadata.get("rule", Rule())
    kind = str(f.type)
    integer = "int" in kind
    element = (lambda v: [v] * (rule.items or 1)) if kind.startswith("list") else (lambda v: v)
    values: list[Any] = []
    if rule.min is not None:
        values.append(element(rule.min - 1))  # wrong sign, zero, below the bound
    if rule.above is not None:
        values += [element(rule.above), element(rule.above - 1)]
    if rule.max is not None:
        values.append(element(int(rule.max) * 10 + 1 if integer else rule.max * 10 + 1))  # an absurd size
    if rule.below is not None:
        values.append(element(rule.below))
    if rule.odd:
        values.append(int(rule.min) + 1)
    if rule.choices:
        values.append(max(rule.choices) + 1)
    if rule.items:
        values.append([0.5] * (rule.items + 1))
    if rule.min_items:
        values.append([])
    if rule.pattern:
        values.append(["not/a url!"] if kind.startswith("list") else "not/a name!")
    if rule.path:
        values.append(NO_SUCH_PATH)
    if "str" not in kind and "Any" not in kind:
        values.append("abc")  # the wrong type
    return [_literal(v) for v in values]


def selections(tmp_folder: Path) -> Iterator[tuple[list[str], Any, str]]:
    """(overrides choosing the model and dataset, the schema instance, its key prefix) for every schema."""
    folder = [f"dataset.path={tmp_folder}"]
    yield ["model=vae", "dataset=mnist"], Config(model=None, dataset=None), ""
    for name, options in registry.configs("model").items():
        yield [f"model={name}", "dataset=mnist"], options(), "model."
    for name, options in registry.configs("dataset").items():
        yield ["model=vae", f"dataset={name}", *(folder if name == "folder" else [])], options(), "dataset."


def cases(tmp_folder: Path) -> list[tuple[list[str], str, str]]:
    found = []
    for choice, schema, prefix in selections(tmp_folder):
        for key, f, default in schema_keys(schema, prefix):
            if key in ("model", "dataset"):
                continue
            found += [(choice, key, value) for value in refused_values(f, default)]
    return found


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), count=12)


# Free-form text: any string is a valid value (paths are checked where they are used: test_one_line_... below).
FREE_TEXT = {"trainer.resume", "dataset.root"}


def test_every_key_of_every_schema_refuses_its_bad_values(image_folder: Path) -> None:
    table = cases(image_folder)
    every_key = {key for _, schema, prefix in selections(image_folder) for key, _, _ in schema_keys(schema, prefix)}
    assert every_key - {key for _, key, _ in table} == FREE_TEXT | {"model", "dataset"}
    composed: dict[tuple[str, ...], tuple[Any, Any]] = {}
    for choice, key, literal in table:
        if tuple(choice) not in composed:
            cfg = compose_config(*choice)
            composed[tuple(choice)] = cfg, to_config(cfg)
        cfg, config = composed[tuple(choice)]
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={literal}"]))["v"]
        try:  # as the command line sets it: a value of the wrong type is refused while composing
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as err:
            assert key in one_line(err), (key, literal, one_line(err))
            continue
        bad = copy.deepcopy(config)
        *parents, name = key.split(".")
        setattr(functools.reduce(getattr, parents, bad), name, value)
        message = next(problems(bad), None)
        assert message is not None, (key, literal)
        assert message.startswith(key) or f" {key}" in message, (key, literal, message)
        assert "\n" not in message


@pytest.mark.parametrize(
    "args, key",
    [
        (["trainer.batch_size=0"], "trainer.batch_size"),  # zero
        (["trainer.lr=-0.1"], "trainer.lr"),  # wrong sign
        (["seed=-1"], "seed"),
        (["trainer.num_samples=100000000"], "trainer.num_samples"),  # absurd size
        (["dataset.image_size=0"], "dataset.image_size"),  # zero was once silently ignored
        (["dataset.image_size=-28"], "dataset.image_size"),
        (["model=pixelcnn", "model.kernel_size=4"], "model.kernel_size"),
        (["model=wgan", "model.lipschitz=gp", "model.critic_norm=batch"], "model.critic_norm"),  # between fields
        (["model.optim.betas=[0.9]"], "model.optim.betas"),
        (["trainer.device=gpu"], "trainer.device"),
        (["trainer.max_steps=abc"], "trainer.max_steps"),  # wrong type: Hydra's own error, exit 2 too
        (["trainer.precision=fp8"], "trainer.precision"),
        (["trainer.max_stpes=1"], "trainer.max_stpes"),  # a misspelt key
        (["metrics.fid.inception_weights=/nonexistent/weights.pth"], "metrics.fid.inception_weights"),
        ([f"dataset.root={NO_SUCH_PATH}", "dataset.download=false"], "dataset.root"),
        (["dataset=folder", f"dataset.path={NO_SUCH_PATH}"], "dataset.path"),
        ([f"trainer.resume={NO_SUCH_PATH}"], "trainer.resume"),
        (["dataset=celeba", "model.conditional=true"], "model.conditional"),  # before decoding any image
    ],
)
def test_one_line_exit_2_no_traceback(tmp_path: Path, args: list[str], key: str) -> None:
    status, out, err = gentrain_in_process(*args, run_dir=tmp_path / "run")
    assert status == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gentrain: error: ") and key in lines[0], err
    assert "Traceback" not in out + err and "data: " not in out  # nothing was loaded
    assert not (tmp_path / "run" / ".hydra").exists()  # nothing was written


def test_a_bug_is_not_a_user_error(tmp_path: Path, monkeypatch) -> None:
    """Exit status 1 and a traceback are for bugs only: an unexpected exception propagates."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(gentrain.run, "train", broken)
    with pytest.raises(ZeroDivisionError):
        gentrain_in_process("trainer=debug", run_dir=tmp_path / "run")


def test_the_real_command_exits_2_with_one_line(tmp_path: Path) -> None:
    for args in (["model=nope"], ["trainer.batch_size=0"], ["dataset.image_size=0", "model=dcgan"]):
        result = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
