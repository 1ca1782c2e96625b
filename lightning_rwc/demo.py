"""The README's first command: a short real training run with the callback, then clustering of its layers.

By default a torchvision ResNet-18 (adapted to small grey images) learns scikit-learn's bundled handwritten digits
on the CPU; ``--data fashion-mnist --data-dir DIR`` trains on Fashion-MNIST read from its standard IDX files (the
Debian package ``dataset-fashion-mnist`` installs them under ``/usr/share/datasets/fashion-mnist``).

Run it with ``python -m lightning_rwc.demo`` or ``lightning-rwc demo``.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (shared by ``python -m lightning_rwc.demo`` and ``lightning-rwc demo``).

    Example::

        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> parser.parse_args(["--epochs", "3"]).epochs
        3
    """
    parser.add_argument("--data", choices=("digits", "fashion-mnist"), default="digits", help="default: digits")
    parser.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST's *-ubyte.gz files")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--epochs", type=int, default=5, help="default: 5")
    parser.add_argument("--every-n-steps", type=int, default=5, help="measure every n optimizer steps (default: 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64")
    parser.add_argument("--lr", type=float, default=0.02, help="SGD learning rate, momentum 0.9 (default: 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--out", default="demo_logs", help="log folder (default: demo_logs)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default: cpu)")


def load_digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1797 handwritten 8x8 digits, scaled to [0, 1], split 80/20 with a fixed seed.

    Example::

        >>> arrays = load_digits_arrays()
        >>> arrays["train"][0].shape, arrays["test"][0].shape
        ((1437, 1, 8, 8), (360, 1, 8, 8))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def load_fashion_mnist_arrays(data_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST from its IDX files (``train-images-idx3-ubyte.gz`` and the three others) in ``data_dir``.

    Example::

        >>> load_fashion_mnist_arrays("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: /nonexistent lacks train-images-idx3-ubyte.gz, ...
    """
    data_dir = Path(data_dir)
    missing = [name for pair in FASHION_FILES.values() for name in pair if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{data_dir} lacks {', '.join(missing)}. On Debian or Ubuntu, `apt-get install dataset-fashion-mnist` puts "
            "the files in /usr/share/datasets/fashion-mnist; pass that folder as --data-dir."
        )
    out = {}
    for split, (images, labels) in FASHION_FILES.items():
        x = read_idx(data_dir / images).astype(np.float32)[:, None] / 255.0
        out[split] = (x, read_idx(data_dir / labels).astype(np.int64))
    return out


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
        >>> _ = path.write_bytes(struct.pack(">HBBI", 0, 8, 1, 3) + bytes([7, 8, 9]))
        >>> read_idx(path).tolist()
        [7, 8, 9]
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def cpu_budget() -> int:
    """How many CPUs this process may keep busy: its CPU affinity, capped by a cgroup CPU quota if one is set.

    Containers often limit CPU time by a quota while the process sees every core of the host; PyTorch then starts
    a thread per core and the threads wait for each other. Reads ``cpu.max`` (cgroup v2) or ``cpu.cfs_quota_us``
    and ``cpu.cfs_period_us`` (cgroup v1).

    Example::

        >>> 1 <= cpu_budget() <= (os.cpu_count() or 1)
        True
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _read_words("/sys/fs/cgroup/cpu.max") or [
        *_read_words("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        *_read_words("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ]
    if len(quota) == 2 and quota[0].lstrip("-").isdigit() and int(quota[0]) > 0 and int(quota[1]) > 0:
        count = min(count, math.ceil(int(quota[0]) / int(quota[1])))
    return max(1, count)


def _read_words(path: str) -> list[str]:
    try:
        with open(path) as handle:
            return handle.read().split()
    except OSError:
        return []


def resnet18_for_small_grey_images(num_classes: int = 10) -> Any:
    """Torchvision's ResNet-18 with a 3x3 stride-1 first convolution on one channel and no max-pool.

    The smallest change that keeps 8x8 and 28x28 images from shrinking to nothing before the last block.

    Example::

        >>> import torch
        >>> resnet18_for_small_grey_images()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    from torch import nn
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def make_classifier(model: Any, lr: float, num_classes: int = 10) -> Any:
    """A LightningModule that trains ``model`` with SGD (momentum 0.9, constant ``lr``) and logs accuracy.

    Example::

        >>> import torch
        >>> module = make_classifier(torch.nn.Linear(4, 10), lr=0.1)
        >>> type(module.configure_optimizers()).__name__
        'SGD'
    """
    import lightning.pytorch as pl
    import torch
    import torchmetrics

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
            self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            self.train_acc(logits, y)
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.val_acc(self.model(x), y)
            self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    return Classifier()


def loaders(arrays: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, limit: int | None, seed: int) -> Any:
    """Train and test DataLoaders over in-memory arrays.

    Example::

        >>> train, test = loaders(load_digits_arrays(), batch_size=32, limit=64, seed=0)
        >>> len(train.dataset), len(test.dataset)
        (64, 360)
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    def dataset(split: str, n: int | None) -> TensorDataset:
        x, y = arrays[split]
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x[:n])), torch.from_numpy(y[:n]).long())

    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(dataset("train", limit), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(dataset("test", None), batch_size=256)
    return train, test


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Train with the callback, cluster the run, print where everything is; return the figures it printed.

    Example::

        >>> import tempfile
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> options = ["--epochs", "2", "--limit", "64", "--every-n-steps", "1"]
        >>> args = parser.parse_args([*options, "--out", tempfile.mkdtemp()])
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as printed:
        ...     summary = run_demo(args)
        >>> "Trained 2 epochs" in printed.getvalue(), sorted(summary)
        (True, ['accuracy', 'clusters', 'fit_seconds', 'log_dir'])
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_rwc.callback import RelativeWeightChange
    from lightning_rwc.pipeline import cluster_run

    if args.data == "fashion-mnist":
        if not args.data_dir:
            raise SystemExit("--data fashion-mnist needs --data-dir DIR (see `lightning-rwc demo --help`)")
        arrays = load_fashion_mnist_arrays(args.data_dir)
    else:
        arrays = load_digits_arrays()
    import torch

    if args.accelerator == "cpu" and cpu_budget() < torch.get_num_threads():
        torch.set_num_threads(cpu_budget())
        print(f"Training with {cpu_budget()} CPU threads (the CPU quota of this process).")
    pl.seed_everything(args.seed, workers=True, verbose=False)
    train, test = loaders(arrays, args.batch_size, args.limit, args.seed)
    steps = args.epochs * len(train)
    if steps < 2 * args.every_n_steps:  # clustering needs two measurements
        raise ValueError(
            f"{args.epochs} epochs of {len(train)} batches are {steps} optimizer steps: fewer than the two "
            f"measurements (every {args.every_n_steps} steps) that clustering needs. Raise --epochs or --limit, or "
            "lower --every-n-steps."
        )
    module = make_classifier(resnet18_for_small_grey_images(), args.lr)
    logger = TensorBoardLogger(args.out, name=args.data)
    rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=args.every_n_steps)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        callbacks=[rwc],
        logger=logger,
        enable_checkpointing=False,
        deterministic=True,
        enable_model_summary=False,
        enable_progress_bar=sys.stdout.isatty(),  # a progress bar in a log file is noise
    )
    start = time.perf_counter()
    trainer.fit(module, train, test)
    fit_seconds = time.perf_counter() - start
    accuracy = float(trainer.callback_metrics["val/acc"])
    print(f"\nTrained {args.epochs} epochs in {fit_seconds:.1f} s; test accuracy {accuracy:.3f}.")
    print(f"RWC of all weights every {args.every_n_steps} steps: {', '.join(f'{v:.4f}' for v in rwc.history.total)}")
    out = cluster_run(logger.log_dir)
    print(f"\nClusters of {len(out.result.layers)} layers:\n{out.result.markdown()}")
    print(f"\nWrote {out.cluster_run} and {out.json_path}.")
    for path in out.plots:
        print(f"Plot: {path}")
    if out.plots_skipped:
        print(out.plots_skipped)
    print(f"\nOpen the curves with:\n  tensorboard --logdir {args.out}")
    return {"fit_seconds": fit_seconds, "accuracy": accuracy, "log_dir": logger.log_dir, "clusters": out}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m lightning_rwc.demo``.

    Example::

        >>> main(["--data", "fashion-mnist", "--data-dir", "/nonexistent"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = argparse.ArgumentParser(prog="python -m lightning_rwc.demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_demo(args)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
