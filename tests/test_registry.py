"""One owner for a model's identity: a name is written once, on the config class, and the name typed is the
name that is built, logged and checkpointed. Adding a model is one file and one YAML."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config, run_cli
from hydra.errors import ConfigCompositionException

from gentrain import registry
from gentrain.errors import ConfigError
from gentrain.models.base import GenerativeModel
from gentrain.models.schemas.gan import DCGANConfig


def test_a_model_reusing_another_models_config_class_is_refused_at_import() -> None:
    assert registry.implementation(DCGANConfig).__name__ == "DCGAN"
    with pytest.raises(registry.RegistryError, match="DCGANConfig .* claimed by both DCGAN and LSGANTrap"):
        class LSGANTrap(GenerativeModel, config=DCGANConfig):  # the trap: LSGAN has no options of its own
            pass


def test_a_name_or_a_config_class_given_twice_is_refused() -> None:
    with pytest.raises(registry.RegistryError, match="model name 'vae' is taken by VAEConfig"):
        @registry.model_config("vae")
        @dataclass
        class AnotherVAEConfig:
            pass

    with pytest.raises(registry.RegistryError, match="DCGANConfig already names model 'dcgan'"):
        registry.model_config("lsgan_trap")(DCGANConfig)


def test_a_yaml_that_composes_another_models_options_is_refused(tmp_path: Path) -> None:
    """configs/model/lsgan.yaml reusing /schema_model_dcgan would train and checkpoint a DCGAN under the name
    'lsgan': the composed options must be the class named after the option the user typed."""
    from gentrain.composition import check_choices

    cfg = compose_config("model=dcgan")
    with pytest.raises(ConfigError, match="model=lsgan composes the options of model 'dcgan'"):
        check_choices(cfg, {"model": "lsgan", "dataset": "mnist"})
    check_choices(cfg, {"model": "dcgan", "dataset": "mnist"})


TOY_MODEL = '''
"""A throw-away model written as one file (tests/test_registry.py writes it, runs it, and deletes it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from gentrain.config import OptimizerConfig, setting
from gentrain.models.likelihood import LikelihoodModel
from gentrain.registry import model_config


@model_config("toy_independent_pixels")
@dataclass
class ToyConfig:
    temperature_floor: float = setting(0.0, min=0)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)


class ToyIndependentPixels(LikelihoodModel, config=ToyConfig):
    """Every sub-pixel an independent categorical: exact bits/dim, trivial sampling."""

    def __init__(self, cfg: ToyConfig, data):
        super().__init__(data)
        self.cfg = cfg
        self.logits = nn.Parameter(torch.zeros(data.channels, data.height, data.width, data.levels))

    def nll_nats(self, batch):
        log_probs = self.logits.log_softmax(-1).expand(len(batch), *self.logits.shape)
        picked = log_probs.gather(-1, batch.x.long().unsqueeze(-1)).squeeze(-1)
        return -picked.flatten(1).sum(1)

    def draw(self, n, labels, generator, temperature):
        probs = self.logits.softmax(-1).reshape(-1, self.data.levels)
        drawn = torch.multinomial(probs, n, replacement=True, generator=generator).T
        return drawn.reshape(n, *self.logits.shape[:-1]).float() / (self.data.levels - 1)
'''


@pytest.fixture
def one_file_model():
    """A new model as one Python file and one YAML, nothing else (removed afterwards)."""
    files = {REPO / "src" / "gentrain" / "models" / "toy_independent_pixels.py": textwrap.dedent(TOY_MODEL),
             REPO / "configs" / "model" / "toy_independent_pixels.yaml":
                 "defaults:\n  - /schema_model_toy_independent_pixels@_here_\n  - _self_\n"}
    for path, text in files.items():
        assert not path.exists()
        path.write_text(text)
    try:
        yield "toy_independent_pixels"
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def test_a_model_added_as_one_file_and_one_yaml(one_file_model: str, tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    quick = ("trainer=debug", "trainer.max_steps=4", "trainer.eval_every=2")
    result = run_cli(f"model={one_file_model}", *quick, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == one_file_model and 0 < metrics["test"]["bits_per_dim"] < 8.0001
    state = torch.load(run_dir / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert state["identity"]["model"] == one_file_model  # the name typed is the name checkpointed

    resumed = run_cli(f"trainer.resume={run_dir}", "trainer.max_steps=6", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 6
    bin_dir = Path(sys.executable).parent
    for command in ([str(bin_dir / "gentrain-sample"), f"run={run_dir}", "n=4"],
                    [str(bin_dir / "gentrain-eval"), f"run={run_dir}", f"dataset.root={shared_data}"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert (run_dir / "eval" / "metrics.json").exists() and list((run_dir / "samples").glob("samples_*.npz"))


def test_every_option_of_the_model_group_has_a_named_config() -> None:
    models = registry.configs("model")
    for name in models:
        assert type(compose_config(f"model={name}").model._metadata.object_type) is type
        assert registry.name_of(models[name]) == name
    with pytest.raises(ConfigCompositionException):
        compose_config("model=no_such_model")


def module_graph() -> dict[str, set[str]]:
    """gentrain module -> the gentrain modules it imports when it is imported (module-level imports; imports
    inside functions and under TYPE_CHECKING are not)."""
    root = REPO / "src"
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / "gentrain").rglob("*.py") if p.name != "__main__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for statement in ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node]:
                if isinstance(statement, ast.Import):
                    edges |= {a.name for a in statement.names}
                elif isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
                    edges |= {statement.module} | {f"{statement.module}.{a.name}" for a in statement.names}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_the_import_graph_has_no_cycle_and_composition_needs_no_torch() -> None:
    graph = module_graph()
    assert len(graph) > 30
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join(path + [module, target])}"
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert graph["gentrain.config"] == {"gentrain.settings"}  # the schemas and their rules: leaves
    assert not graph["gentrain.settings"] and not graph["gentrain.registry"]
    # What `gentrain --help`, `--cfg job` and a config error import: nothing that imports torch.
    light = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from gentrain.composition import compose, register, to_config
        register()
        to_config(compose(["model=wgan", "dataset=cifar10"]))
        import gentrain.cli, gentrain.errors, gentrain.run_names, gentrain.rundir
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "numpy"))[:5])
    """)], capture_output=True, text=True)
    assert light.returncode == 0 and light.stdout.strip() == "[]", light.stdout + light.stderr
    everything = "import importlib; [importlib.import_module(m) for m in %r]" % sorted(graph)
    done = subprocess.run([sys.executable, "-c", everything], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
