"""CycleGAN and dataset=unpaired: the losses against their definitions, the history pool, batches that never pair
the domains by position, the domains' options, and a run through the command with translation afterwards."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD_ENV, compose_config, run_cli
from PIL import Image
from synthetic import write_mnist

from gentrain.composition import build_model, load_dataset, to_config
from gentrain.config import LRSchedule
from gentrain.data.base import ImageSplit
from gentrain.data.batches import Batch, TrainBatches, eval_batches
from gentrain.data.schemas import DataInfo, UnpairedDataInfo
from gentrain.errors import ConfigError
from gentrain.models.cyclegan import ImagePool
from gentrain.optim import lr_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_NETWORKS = ("model.generator_width=4", "model.critic_width=4", "model.residual_blocks=1")


def tiny_cyclegan(*overrides: str, info=UnpairedDataInfo(1, 28, 28, 256, None)):
    return build_model(to_config(compose_config("model=cyclegan", "dataset=unpaired", *TINY_NETWORKS,
                                                *overrides)).model, info)


def random_batch(n: int = 4) -> Batch:
    draw = lambda: torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    return Batch(draw(), None, draw())


# --- the objective ------------------------------------------------------------------------------------------
def test_generator_loss_is_adversarial_plus_cycle_plus_identity_by_definition() -> None:
    model = tiny_cyclegan("model.cycle_weight=7", "model.identity_weight=0.3")
    batch = random_batch()
    torch.manual_seed(0)
    out = model.generator_loss(batch, step=0)
    a, b = batch.x.float() / 127.5 - 1, batch.other.float() / 127.5 - 1
    G, F, D_A, D_B = model.to_b, model.to_a, model.critic_a, model.critic_b
    with torch.no_grad():
        adversarial = ((D_B(G(a)) - 1) ** 2).mean() + ((D_A(F(b)) - 1) ** 2).mean()
        cycle = (F(G(a)) - a).abs().mean() + (G(F(b)) - b).abs().mean()
        identity = (G(b) - b).abs().mean() + (F(a) - a).abs().mean()
    torch.testing.assert_close(out.logs["adversarial_loss"], adversarial)
    torch.testing.assert_close(out.logs["cycle_loss"], cycle)
    torch.testing.assert_close(out.logs["identity_loss"], identity)
    torch.testing.assert_close(out.loss.detach(), adversarial + 7 * cycle + 0.3 * 7 * identity)
    assert "identity_loss" not in tiny_cyclegan("model.identity_weight=0").generator_loss(batch, 0).logs


def test_critic_loss_is_least_squares_on_real_images_and_the_generators_fakes() -> None:
    model = tiny_cyclegan("model.pool_size=0")  # no pool: the critic sees this step's fakes
    batch = random_batch()
    model.generator_loss(batch, step=0)
    fake_a, fake_b = model._fakes
    out = model.critic_loss(batch, step=0)
    a, b = batch.x.float() / 127.5 - 1, batch.other.float() / 127.5 - 1
    with torch.no_grad():
        expected_a = 0.5 * (((model.critic_a(a) - 1) ** 2).mean() + (model.critic_a(fake_a) ** 2).mean())
        expected_b = 0.5 * (((model.critic_b(b) - 1) ** 2).mean() + (model.critic_b(fake_b) ** 2).mean())
    torch.testing.assert_close(out.logs["critic_loss_a"], expected_a)
    torch.testing.assert_close(out.loss.detach(), expected_a + expected_b)


def test_the_networks_follow_the_paper_and_take_every_image_side() -> None:
    for side, patches in ((28, 5), (32, 6), (64, 6)):
        model = tiny_cyclegan(info=UnpairedDataInfo(3, side, side, 256, None))
        x = torch.randn(2, 3, side, side)
        assert model.to_b(x).shape == x.shape and model.to_b(x).abs().max() <= 1
        assert model.critic_a(x).shape == (2, 1, patches, patches)
    full = build_model(to_config(compose_config("model=cyclegan", "dataset=unpaired")).model,
                       UnpairedDataInfo(3, 256, 256, 256, None))
    assert sum(1 for m in full.to_b.modules() if type(m).__name__ == "ResidualBlock") == 9  # 6 below 256 pixels
    strided = [m.stride for m in full.critic_a.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strided == [(2, 2)] * 3 + [(1, 1)] * 2  # 70x70 PatchGAN
    with pytest.raises(ConfigError, match="side divisible by 4"):
        tiny_cyclegan(info=UnpairedDataInfo(1, 30, 30, 256, None))


def test_the_pool_returns_only_images_it_was_given_and_resumes() -> None:
    torch.manual_seed(0)
    pool = ImagePool(4, (1, 1, 1))
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: stored and returned as they are
    given, new_returned = set(range(4)), 0
    for step in range(500):
        batch = torch.tensor([4.0 + step]).view(1, 1, 1, 1)
        out = pool.query(batch).flatten().tolist()
        given.update(batch.flatten().tolist())
        assert set(out) <= given  # never an image it was not given
        new_returned += out == batch.flatten().tolist()
    assert 0.45 < new_returned / 500 < 0.55  # one image at a time: returned as it is half of the time
    assert set(pool.images.flatten().tolist()) <= given and int(pool.count) == 4
    restored = ImagePool(4, (1, 1, 1))
    restored.load_state_dict(pool.state_dict())
    assert restored.filled == 4 and torch.equal(restored.images, pool.images)  # a resumed run keeps its pool


def reference_pool_query(pool: list, size: int, batch: list, coins: list, slots: list) -> list:
    """The reference ImagePool (Zhu et al.'s pytorch-CycleGAN-and-pix2pix), one image at a time, with given draws."""
    returned = []
    for image, coin, slot in zip(batch, coins, slots):
        if len(pool) < size:
            pool.append(image)
            returned.append(image)
        elif coin > 0.5:
            returned.append(pool[slot])
            pool[slot] = image
        else:
            returned.append(image)
    return returned


def test_the_pool_takes_a_batch_one_image_at_a_time_like_the_reference() -> None:
    """Batches of 16 into a pool of 8: two images of one batch often pick the same slot (a batched swap returned
    one stored image twice and lost the new one); every batch's output and the pool equal the reference's."""
    pool, reference, size = ImagePool(8, (1, 1, 1)), [], 8
    collisions = 0
    for step in range(200):
        batch = torch.arange(16.0 * step, 16.0 * step + 16).view(16, 1, 1, 1) + 1
        state = torch.get_rng_state()
        coins, slots = torch.rand(16).tolist(), torch.randint(size, (16,)).tolist()
        torch.set_rng_state(state)
        expected = reference_pool_query(reference, size, batch.flatten().tolist(), coins, slots)
        assert pool.query(batch).flatten().tolist() == expected
        assert pool.images.flatten().tolist() == reference
        swapped = [s for c, s in zip(coins, slots) if c > 0.5]
        collisions += len(swapped) - len(set(swapped))
    assert collisions > 100  # the case that differed


def test_linear_decay_over_the_second_half() -> None:
    factors = [lr_factor(step, LRSchedule.linear_second_half, 0, 100) for step in (0, 25, 50, 75, 100)]
    assert factors == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0])


# --- unpaired data ------------------------------------------------------------------------------------------
def coded(n: int, offset: int) -> torch.Tensor:
    """n images whose single pixel is their index plus offset."""
    return (torch.arange(n) + offset).to(torch.uint8).view(n, 1, 1, 1)


def test_unpaired_batches_draw_each_domain_in_its_own_order_and_resume_exactly() -> None:
    split = ImageSplit(coded(60, 0), None, coded(45, 100))
    batches = TrainBatches(split, 10, seed=3, use_labels=False, dynamic_binarization=False)
    pairs = []
    for _ in range(12):  # two epochs of 6 steps
        batch = next(batches)
        pairs.append(torch.stack([batch.x.flatten().long(), batch.other.flatten().long() - 100], 1))
    pairs = torch.cat(pairs)
    first, second = pairs[:60], pairs[60:]
    assert len(set(pairs[:, 1].tolist())) == 45  # every B image is used
    assert not torch.equal(first[:, 1], second[:, 1])  # B's order changes with the epoch
    pairing = {tuple(p) for p in first.tolist()} & {tuple(p) for p in second.tolist()}
    assert len(pairing) < 10  # the same A image meets other B images in another epoch
    correlation = torch.corrcoef(first.T.double())[0, 1].abs()
    assert correlation < 0.5, correlation  # B's order does not follow A's
    # Resuming in the middle of an epoch gives the uninterrupted run's batches.
    again = TrainBatches(split, 10, seed=3, use_labels=False, dynamic_binarization=False)
    for _ in range(3):
        next(again)
    resumed = TrainBatches(split, 10, seed=3, use_labels=False, dynamic_binarization=False)
    resumed.load_state_dict(again.state_dict())
    expected, got = next(again), next(resumed)
    assert torch.equal(expected.x, got.x) and torch.equal(expected.other, got.other)
    evaluated = next(eval_batches(split, 50, use_labels=False))
    assert evaluated.other.shape == (50, 1, 1, 1)


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-mnist")
    write_mnist(root, n_train=120, n_test=40)
    return root


def test_domains_are_halves_inversions_or_class_subsets(tiny_mnist: Path) -> None:
    def load(*overrides: str):
        return load_dataset(to_config(compose_config("dataset=unpaired", f"dataset.root={tiny_mnist}",
                                                     "dataset.verify=false", *overrides)).dataset)

    halves = load()
    a, b = halves.domains
    assert len(a.test) + len(b.test) == 40 and torch.equal(halves.test.images, a.test.images)
    full = load("dataset.a.part=all", "dataset.b.part=all")
    assert torch.equal(full.test.other, 255 - full.test.images)  # b: the same images, inverted
    assert torch.equal(torch.cat([halves.test.images, 255 - halves.test.other]), full.test.images)  # disjoint halves
    subset = load("dataset.a.classes=[1,2]")
    assert set(subset.domains[0].train.labels.tolist()) <= {1, 2}
    assert subset.info == UnpairedDataInfo(1, 28, 28, 256, None)
    for overrides, message in [
        (["dataset.a.classes=[12]"], r"dataset.a.classes=\[12\]: mnist has classes 0 to 9"),
        (["dataset.b.source=cifar10"], "both domains need one shape"),
        (["dataset.a.source=folder"], "dataset.a.path is required"),
        (["dataset.binarize=static"], "unpaired domains stay 8-bit"),
    ]:
        with pytest.raises(ConfigError, match=message):
            to_config(compose_config("dataset=unpaired", *overrides))


def test_models_and_data_must_agree_on_the_number_of_domains() -> None:
    with pytest.raises(ConfigError, match="model=cyclegan translates between two image domains: use dataset=unpaired"):
        tiny_cyclegan(info=DataInfo(1, 28, 28, 256, 10))
    with pytest.raises(ConfigError, match="model=vae learns one distribution"):
        build_model(to_config(compose_config("model=vae")).model, UnpairedDataInfo(1, 28, 28, 256, None))


# --- through the commands -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory, tiny_mnist: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "cyclegan"
    result = run_cli(
        "model=cyclegan", "dataset=unpaired", *TINY_NETWORKS, "trainer=debug", "trainer.max_steps=4",
        "trainer.eval_every=2", "trainer.batch_size=4", "trainer.lr_schedule=linear_second_half",
        f"dataset.root={tiny_mnist}", "dataset.verify=false", "metrics.fid.num_samples=20",
        "metrics.fid.kid_subset_size=10", "metrics.fid.kid_subsets=2", "metrics.fid.classifier.steps=3",
        f"hydra.run.dir={run_dir}", cwd=run_dir.parent, env=ONE_THREAD_ENV,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def pictures(folder: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (40, 36), color=30 * i).save(folder / name)
    return folder


def test_cyclegan_trains_then_translates_a_folder(tmp_path: Path, cyclegan_run: Path) -> None:
    run_dir = cyclegan_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    val = metrics["val"]
    assert metrics["main_metric"] == "fid" and val["fid"] == pytest.approx((val["fid_a2b"] + val["fid_b2a"]) / 2)
    assert 0 <= val["cycle_error"] <= 1 and math.isfinite(metrics["test"]["cycle_error_b"])
    assert {"precision_a2b", "recall_b2a", "fid_floor_a2b"} <= set(val)
    assert ((run_dir / "samples" / "a_to_b_step_000004.png").exists()
            and (run_dir / "samples" / "b_to_a_step_000004.png").exists())

    pictures(tmp_path / "mine", [f"nested/digit{i}.png" for i in range(3)])
    out = tmp_path / "translated"
    sample = [sys.executable, "-m", "gentrain.cli_sample", f"run={run_dir}"]
    done = subprocess.run([*sample, "translate=b2a", f"input={tmp_path / 'mine'}", f"output={out}"],
                          capture_output=True, text=True, env={**ONE_THREAD_ENV, "PATH": ""}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["nested/digit0.png", "nested/digit1.png", "nested/digit2.png"]
    assert Image.open(out / "nested" / "digit0.png").size == (28, 28)
    refused = subprocess.run([*sample, "n=4"], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "translate=a2b input=<folder of images>" in refused.stderr


def test_translation_never_overwrites_or_mixes_with_its_input(tmp_path: Path, cyclegan_run: Path,
                                                              monkeypatch) -> None:
    """Every way a translation could replace a user's image or lose one is refused before any work, with one line;
    overwrite=true replaces earlier translations only; a full disk mid-image leaves no 0-byte PNG."""
    import errno

    import gentrain.logger as logger_module
    from conftest import command_in_process
    from test_run_directory import one_error_line, snapshot

    from gentrain import cli_sample

    source = pictures(tmp_path / "horses", ["a.png", "b.png", "sub/c.png"])
    before = snapshot(tmp_path)

    def translate(output: Path, *extra: str, folder: Path = source) -> tuple[int, str, str]:
        return command_in_process(cli_sample.main, f"run={cyclegan_run}", "translate=a2b", f"input={folder}",
                                  f"output={output}", *extra)

    for output in (source, source / "sub", source / "translated", tmp_path):  # equal, inside, around
        line = one_error_line(translate(output))
        assert "overlap: the translations would replace or mix with the images they come from" in line
        assert snapshot(tmp_path) == before

    out = tmp_path / "zebras"
    pictures(tmp_path / "clash", ["a.png", "a.jpg"])
    line = one_error_line(translate(out, folder=tmp_path / "clash"))
    assert f"a.jpg and a.png would both be written as {out / 'a.png'}" in line and not out.exists()

    out.mkdir()
    (out / "b.png").write_bytes(b"the user's own")
    line = one_error_line(translate(out))
    assert f"{out / 'b.png'} already exists" in line and "overwrite=true" in line
    assert sorted(p.name for p in out.rglob("*")) == ["b.png"] and (out / "b.png").read_bytes() == b"the user's own"
    assert translate(out, "overwrite=true")[0] == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "b.png", "sub/c.png"]

    def full_disk(image, f, **kwargs) -> None:
        f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logger_module, "save_image", full_disk)
    line = one_error_line(translate(tmp_path / "full"))
    assert "No space left on device" in line
    assert [p for p in (tmp_path / "full").rglob("*") if p.is_file()] == []  # no 0-byte or partial PNG
