"""A plain single-file PyTorch training loop, the reference gentrain is timed against (scripts/benchmark.py).

The MLP VAE of pytorch/examples: 784-400-20, Bernoulli decoder on dynamically binarized MNIST, Adam 1e-3,
batch 128, torchvision's MNIST dataset and a standard DataLoader. Prints one JSON line per timing window
and a summary line at the end.
"""

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.fc4(F.relu(self.fc3(z))), mu, logvar


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=54_000, help="gentrain holds 10%% out for validation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--window", type=int, default=50, help="steps per timing window")
    args = parser.parse_args()

    torch.manual_seed(0)
    dataset = datasets.MNIST(args.data, train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(Subset(dataset, range(args.train_images)), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, drop_last=True)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    steps, start = 0, time.perf_counter()
    window_start = start
    for _ in range(args.epochs):
        for x, _ in loader:
            x = torch.bernoulli(x.view(-1, 784))  # dynamic binarization
            logits, mu, logvar = model(x)
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (recon + kl) / x.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps % args.window == 0:
                now = time.perf_counter()
                print(json.dumps({"window_images_per_sec": args.window * args.batch_size / (now - window_start),
                                  "loss": loss.item()}), flush=True)
                window_start = now
    seconds = time.perf_counter() - start
    print(json.dumps({"train_seconds": seconds, "steps": steps, "images": steps * args.batch_size,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
