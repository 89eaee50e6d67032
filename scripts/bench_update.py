"""What gentrain's training step costs around the model's own work, in one process.

gentrain's step (Trainer._train_step: the update machinery of gentrain/update.py with its gradient norm,
finiteness check and logging window, the schedules, the batch slicing) against a bare hand-written loop (loss,
zero_grad, backward, step) on the same in-memory batches, the same model and the same optimizer class, in
alternating windows of --window steps after a warm-up. One torch thread, so that the two share nothing.

    python scripts/bench_update.py --data ../shared/datasets                       # the MLP VAE
    python scripts/bench_update.py --data ../shared/datasets -- model=dcgan
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--window", type=int, default=100, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=10, help="timed windows of each loop, alternating")
    parser.add_argument("overrides", nargs="*", default=["experiment=vae_binarized_mnist"])
    args = parser.parse_args()
    os.environ["GENTRAIN_DATA"] = str(args.data.absolute())
    torch.set_num_threads(1)

    from gentrain.composition import build_model, compose, load_dataset, identity, to_config
    from gentrain.optim import build_optimizer
    from gentrain.trainer import Trainer

    config = to_config(compose([*args.overrides, "trainer.max_epochs=null", "trainer.max_steps=1000000"]))
    dataset = load_dataset(config.dataset)
    torch.manual_seed(0)
    model = build_model(config.model, dataset.info)
    bare_model = copy.deepcopy(model)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, dataset, config.trainer, run_dir=Path(tmp), device=device, seed=0,
                          identity=identity(config.model, {}, dataset.info), hparams={})
    bare_optimizers = {name: build_optimizer(spec.params, spec.config, config.trainer.lr, device)
                       for name, spec in bare_model.optimizer_specs().items()}
    bare_updates, batches = bare_model.updates(), copy.deepcopy(trainer.batches)

    def gentrain_window() -> float:
        started = time.perf_counter()
        for _ in range(args.window):
            trainer._train_step()
        trainer.updater.take_means()  # what the trainer does at each log_every: the window's one sync
        return time.perf_counter() - started

    def bare_window(step: list[int]) -> float:
        started = time.perf_counter()
        for _ in range(args.window):
            batch = next(batches)
            for update in bare_updates:
                if step[0] % update.every == 0:
                    loss = update.loss(batch, step[0]).loss
                    bare_optimizers[update.optimizer].zero_grad(set_to_none=True)
                    loss.backward()
                    bare_optimizers[update.optimizer].step()
            step[0] += 1
        return time.perf_counter() - started

    step = [0]
    gentrain_window(), bare_window(step)  # warm-up
    ours, bare = [], []
    for _ in range(args.windows):
        ours.append(gentrain_window())
        bare.append(bare_window(step))
    batch_size = config.trainer.batch_size
    ours_rate = args.window * batch_size / statistics.median(ours)
    bare_rate = args.window * batch_size / statistics.median(bare)
    print(f"| `{' '.join(args.overrides)}` | {ours_rate:,.0f} | {bare_rate:,.0f} | {ours_rate / bare_rate:.3f} |")


if __name__ == "__main__":
    main()
