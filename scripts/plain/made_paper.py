"""MADE 1 x 500 with the paper's own training settings, in a plain loop written independently of gentrain's
model: what the published recipe reaches on gentrain's data (is 92.6 nats the loop or the recipe?).

The settings are those of the MADE authors' code for MNIST (github.com/mgermain/MADE, README command) with the
network of the paper's one-hidden-layer row: one mask (natural pixel order, hidden degrees drawn once), 500
ReLU units, direct input-to-output connections ("Output"), orthogonal initialization with zero biases, Adagrad
with learning rate 0.01, minibatches of 100, and early stopping on the validation NLL with a look-ahead of 30
epochs (the paper's protocol); the test NLL is that of the best validation epoch. The data are gentrain's: the
same training / validation / test images and binarization as `gentrain <overrides>` (default: the CPU-hour
MADE preset with dataset.binarize=static).

Prints one JSON line per epoch ({"epoch", "train_nats", "val_nats", "seconds"}), then one with the test NLL.

    OMP_NUM_THREADS=1 python scripts/plain/made_paper.py --max-epochs 300 -- dataset.binarize=static
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.composition import compose, load_dataset, to_config
from gentrain.data.stored import pixels


class PaperMADE(nn.Module):
    """One hidden layer of masked ReLU units plus masked direct connections from the inputs to the outputs."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator):
        super().__init__()
        order = torch.arange(1, dim + 1)  # natural order: pixel d is the d-th variable
        degrees = torch.randint(1, dim, (hidden,), generator=generator)  # each unit sees inputs 1..m(k)
        self.register_buffer("in_mask", (degrees[:, None] >= order[None, :]).float())  # hidden x dim
        self.register_buffer("out_mask", (order[:, None] > degrees[None, :]).float())  # dim x hidden
        self.register_buffer("direct_mask", (order[:, None] > order[None, :]).float())  # dim x dim, strict
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)
        self.direct = nn.Linear(dim, dim, bias=False)
        for layer in (self.hidden, self.out, self.direct):
            nn.init.orthogonal_(layer.weight)
        nn.init.zeros_(self.hidden.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(F.linear(x, self.hidden.weight * self.in_mask, self.hidden.bias))
        direct = F.linear(x, self.direct.weight * self.direct_mask)
        return F.linear(h, self.out.weight * self.out_mask, self.out.bias) + direct


def nll_nats(model: nn.Module, x: Tensor) -> Tensor:
    """Exact negative log-likelihood per image, nats."""
    return F.binary_cross_entropy_with_logits(model(x), x, reduction="none").sum(dim=1)


@torch.no_grad()
def mean_nll(model: nn.Module, images: Tensor, batch_size: int = 1000) -> float:
    total = sum(float(nll_nats(model, images[i : i + batch_size]).double().sum())
                for i in range(0, len(images), batch_size))
    return total / len(images)


def flat(split) -> Tensor:
    """A split's binarized images as a float matrix (images x pixels)."""
    images = pixels(split.images)
    return (images > 0).float().flatten(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--look-ahead", type=int, default=30, help="epochs without a better validation NLL")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("overrides", nargs="*", help="gentrain overrides choosing the data")
    args = parser.parse_args()

    config = to_config(compose(["experiment=hour_made_binarized_mnist", *args.overrides]))
    dataset = load_dataset(config.dataset)
    if dataset.info.levels != 2:
        raise SystemExit("MADE's paper recipe is for binarized data: set dataset.binarize")
    train, val, test = flat(dataset.train), flat(dataset.val), flat(dataset.test)
    torch.manual_seed(args.seed)
    model = PaperMADE(train.shape[1], args.hidden, torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.Adagrad(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(args.seed + 1)

    best, best_epoch, best_state, seconds = float("inf"), 0, None, 0.0
    for epoch in range(1, args.max_epochs + 1):
        tick, train_total = time.perf_counter(), 0.0
        for index in torch.randperm(len(train), generator=order).split(args.batch_size):
            loss = nll_nats(model, train[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_total += float(loss.detach()) * len(index)
        seconds += time.perf_counter() - tick
        val_nats = mean_nll(model, val)
        print(json.dumps({"epoch": epoch, "train_nats": round(train_total / len(train), 3),
                          "val_nats": round(val_nats, 3), "seconds": round(seconds, 1)}), flush=True)
        if val_nats < best:
            best, best_epoch, best_state = val_nats, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= args.look_ahead:
            break
    model.load_state_dict(best_state)
    print(json.dumps({"best_epoch": best_epoch, "val_nats": round(best, 3), "epochs": epoch,
                      "test_nats": round(mean_nll(model, test), 3), "train_seconds": round(seconds, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
