"""How RWC depends on the measuring interval and the optimizer, from three trackers on one training.

The demo's ResNet-18 on the digits, measured every step, every 5 steps and every epoch (23 steps) at once.

Run ``python -m benchmarks.intervals --out benchmarks/results/intervals-cpu.md``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

import numpy as np
import torch

from benchmarks.tables import cpu_name, publish, table
from lightning_rwc import WeightChangeTracker
from lightning_rwc.demo import load_digits_arrays, loaders, resnet18_for_small_grey_images

OPTIMIZERS = {
    "SGD, lr 0.02, momentum 0.9 (the demo's)": lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9),
    "AdamW, lr 1e-3": lambda params: torch.optim.AdamW(params, lr=1e-3),
}


def measure(optimizer_name: str, epochs: int, limit: int | None, intervals: tuple[int, ...]) -> list[dict]:
    """Train once; every tracker measures ``_all`` on its own interval. One row per interval."""
    torch.manual_seed(0)
    model = resnet18_for_small_grey_images()
    train, _ = loaders(load_digits_arrays(), 64, limit, 0)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    trackers = {k: WeightChangeTracker(model) for k in intervals}
    values: dict[int, list[tuple[int, float]]] = {k: [] for k in intervals}
    step, per_epoch = 0, len(train)
    for _ in range(epochs):
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            for k, tracker in trackers.items():
                if step % k == 0:
                    values[k].append((step, tracker.step()["_all"]))
    one_step = np.mean([v for s, v in values[1] if s > per_epoch])
    rows = []
    for k in intervals:
        first = [v for s, v in values[k] if s <= per_epoch]
        later = [v for s, v in values[k] if s > per_epoch]
        rows.append(
            {
                "optimizer": optimizer_name,
                "interval (steps)": k,
                "mean rwc/_all, first epoch": float(np.mean(first)),
                "mean rwc/_all, later epochs": float(np.mean(later)),
                "later / one step": float(np.mean(later) / one_step),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the test suite)")
    parser.add_argument("--out", default=None, help="also write the Markdown table to this file")
    args = parser.parse_args()
    epochs, limit, intervals = (2, 128, (1, 2)) if args.smoke else (3, None, (1, 5, 23))
    rows = [row for name in OPTIMIZERS for row in measure(name, epochs, limit, intervals)]
    sections = [
        f"# RWC against the measuring interval, {date.today().isoformat()}",
        f"CPU: {cpu_name()}; torch {torch.__version__}. ResNet-18 (small grey images) on scikit-learn's digits, "
        f"batch 64 ({'smoke run' if args.smoke else '23 steps an epoch, 3 epochs'}). Command: "
        f"`python -m benchmarks.intervals {' '.join(sys.argv[1:])}`.",
        table(rows),
    ]
    publish(sections, args.out)


if __name__ == "__main__":
    main()
