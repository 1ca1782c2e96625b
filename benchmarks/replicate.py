"""Replication study: do the paper's findings on layer-wise weight change hold here?

``python -m benchmarks.replicate [--full] [--out DIR]`` trains torchvision's ResNet-18, a VGG with batch norm and
AlexNet (each adapted to 28x28 grey images with the smallest change, see :func:`build`) on Fashion-MNIST and on
scikit-learn's digits (upsampled to 28x28), with SGD (momentum 0.9, constant learning rate) and the callback
attached, then writes ``report.md`` with PNG plots into the output directory. The default is sized for a 2-core CPU
(well under 30 minutes); ``--full`` follows the paper (150 epochs, 5 seeds, full data, VGG-19-BN) for a GPU.

Findings checked (Agrawal et al., arXiv 2011.06735):

1. RWC falls over training.
2. RWC generally rises from early to later layers.
3. On the simple tasks, the last block changes less than the middle blocks.
4. Overall RWC is lower on the simpler data set, and (as the paper's abstract puts it) task complexity shows in the
   deeper layers: the two data sets differ more in the last feature block than in the first.

A run whose test accuracy stays below twice chance did not learn: it is flagged, and its findings are left out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_rwc.files import write_json

PAPER_FASHION_ACCURACY = {"resnet18": 0.92, "vgg_bn": 0.916, "alexnet": 0.895}
CLASSES = 10
LEARNED = 2 / CLASSES
"""The least test accuracy of a run whose findings count: twice chance."""
FINDING_2 = """**Finding 2, outcome** (`benchmarks/results/depth-study/report.md`): whether RWC rises or falls with
depth is set by the optimizer, through the layers' widths, not by depth. With SGD (as here) the trend is negative in
networks whose width doubles per stage, as ResNet-18's and VGG's do (the study: -0.45 to -0.83), and mostly goes with
equal widths (-0.09); with AdamW it is positive (+1.00, +0.46), because Adam's first step moves every weight by the
learning rate, so that a layer's first RWC is `2 lr sqrt(fan_in)` in the l1 norm measured here (`lr sqrt(3 fan_in)`
in l2, which the study measured within 2%). Batch norm and weight decay change the size of the trend, not its sign.
AlexNet's widths do not double from layer to layer."""
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
BLOCKS = 4


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg_bn", "alexnet"])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--data-dir", default=DEBIAN_FASHION_DIR, help="Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--subset", type=int, default=2000, help="training images per data set (0: all)")
    parser.add_argument("--test-subset", type=int, default=2000, help="test images per data set (0: all)")
    parser.add_argument("--lr", type=float, default=0.01, help="constant SGD learning rate, momentum 0.9")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--alexnet-batch-size",
        type=int,
        default=16,
        help="AlexNet's batches: without batch norm it needs some hundred optimizer steps to leave its first "
        "plateau, which 64 on the small sets do not give it",
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--full", action="store_true", help="the paper's setting: 150 epochs, 5 seeds, all data")
    parser.add_argument("--out", default="replication")
    parser.add_argument("--log-dir", default=None, help="TensorBoard runs (default: OUT/runs)")
    parser.add_argument("--cluster-method", choices=("hdbscan", "kmeans"), default="hdbscan")
    parser.add_argument(
        "--findings-of",
        default=None,
        metavar="DIR",
        help="train nothing: write the findings of an earlier report in DIR again, from its histories.json and the "
        "accuracies in its report.md",
    )
    args = parser.parse_args(argv)
    if args.full:
        args.epochs, args.seeds, args.subset, args.test_subset, args.vgg = 150, 5, 0, 0, "vgg19_bn"
    else:
        args.vgg = "vgg11_bn"
    return args


def build(name: str, vgg: str = "vgg11_bn") -> Any:
    """The paper's model families for 28x28 grey images, with the smallest change that makes them fit.

    - ResNet-18: first convolution 3x3, stride 1, one input channel; no max-pool (as in the demo).
    - VGG-BN: first convolution on one channel; the fifth max-pool removed (28 px allow only four halvings); the
      classifier reads the 512 pooled channels (global average pool) instead of a 7x7 grid.
    - AlexNet: first convolution 3x3, stride 1, one input channel (an 11x11 stride-4 kernel leaves too little of a
      28 px image for the three max-pools).
    """
    from torch import nn
    from torchvision import models

    from lightning_rwc.demo import resnet18_for_small_grey_images

    if name == "resnet18":
        return resnet18_for_small_grey_images()
    if name == "vgg_bn":
        model = getattr(models, vgg)(num_classes=10)
        model.features[0] = nn.Conv2d(1, 64, kernel_size=3, padding=1)
        last_pool = max(i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d))
        model.features[last_pool] = nn.Identity()
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier[0] = nn.Linear(512, 4096)
        return model
    if name == "alexnet":
        model = models.alexnet(num_classes=10)
        model.features[0] = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1)
        return model
    raise ValueError(f"unknown model {name!r}; choose resnet18, vgg_bn or alexnet")


def load(dataset: str, data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images as (N, 1, 28, 28) float32 in [0, 1]; digits are upsampled bilinearly from 8x8."""
    from lightning_rwc.demo import load_digits_arrays, load_fashion_mnist_arrays

    if dataset == "fashion-mnist":
        return load_fashion_mnist_arrays(data_dir)
    import torch

    arrays = load_digits_arrays()
    up = {}
    for split, (x, y) in arrays.items():
        big = torch.nn.functional.interpolate(torch.from_numpy(x), size=(28, 28), mode="bilinear")
        up[split] = (big.numpy(), y)
    return up


def train_one(model_name: str, dataset: str, seed: int, arrays: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Train one model with the callback; return its history, test accuracy and time."""
    import lightning.pytorch as pl

    from lightning_rwc import RelativeWeightChange
    from lightning_rwc.demo import loaders, make_classifier

    pl.seed_everything(seed, verbose=False)
    subset = {
        "train": tuple(a[: args.subset or None] for a in arrays["train"]),
        "test": tuple(a[: args.test_subset or None] for a in arrays["test"]),
    }
    batch = args.alexnet_batch_size if model_name == "alexnet" else args.batch_size
    train, test = loaders(subset, batch, None, seed)
    rwc = RelativeWeightChange()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        callbacks=[rwc],
        logger=pl.loggers.TensorBoardLogger(args.log_dir or Path(args.out) / "runs", f"{model_name}-{dataset}", seed),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(make_classifier(build(model_name, args.vgg), args.lr), train, test)
    return {
        "history": rwc.history,
        "accuracy": float(trainer.callback_metrics["val/acc"]),
        "seconds": time.perf_counter() - start,
        "log_dir": trainer.logger.log_dir,
    }


HEAD_MARKERS = (".fc.", ".classifier.")


def feature_rows(layers: Sequence[str]) -> tuple[list[int], list[int]]:
    """Indices of the feature-extractor layers (convolutions) and of the classifier head (``fc``, ``classifier``)."""
    head = [i for i, name in enumerate(layers) if any(m in f".{name}" for m in HEAD_MARKERS)]
    return [i for i in range(len(layers)) if i not in head], head


def block_means(values: np.ndarray, blocks: int = BLOCKS) -> np.ndarray:
    """Mean RWC of ``blocks`` consecutive groups of layers (by depth), per measurement: ``(blocks, measurements)``."""
    groups = np.array_split(np.arange(values.shape[0]), blocks)
    return np.array([np.nanmean(values[g], axis=0) for g in groups])


def learned(seeds: list[dict]) -> bool:
    """Whether a model's runs learned: mean test accuracy at least :data:`LEARNED` (twice chance)."""
    return float(np.mean([r["accuracy"] for r in seeds])) >= LEARNED


def findings(runs: dict[tuple[str, str], list[dict]]) -> list[str]:
    """One line per finding and run that learned, with the numbers that decide it; one per run left out."""
    from scipy.stats import spearmanr

    lines = []
    mean_all: dict[tuple[str, str], float] = {}
    block_all: dict[tuple[str, str], np.ndarray] = {}
    for (model, dataset), seeds in runs.items():
        if not learned(seeds):
            accuracy = np.mean([r["accuracy"] for r in seeds])
            lines.append(
                f"{model} on {dataset}: **left out**: test accuracy {accuracy:.3f}, below twice chance "
                f"({LEARNED:.2f}): it did not learn, so its weight changes say nothing of learning"
            )
            continue
        all_values = np.nanmean([r["history"].values for r in seeds], axis=0)
        features, head = feature_rows(seeds[0]["history"].layers)
        values = all_values[features]
        total = np.nanmean([r["history"].total for r in seeds], axis=0)
        blocks = block_means(values)
        block_all[model, dataset] = blocks.mean(axis=1)
        head_mean = float(np.nanmean(all_values[head])) if head else float("nan")
        mean_all[model, dataset] = float(np.mean(total))
        rho_time = spearmanr(np.arange(total.size), total).statistic
        falls = total[-1] < total[0] and rho_time < 0
        lines.append(
            f"1. {model} on {dataset}: RWC falls over training: **{'held' if falls else 'did not hold'}** "
            f"(all-weights RWC {total[0]:.4f} in epoch 1, {total[-1]:.4f} in the last; "
            f"Spearman vs epoch {rho_time:.2f})"
        )
        per_layer = np.nanmean(values, axis=1)
        rho_depth = spearmanr(np.arange(per_layer.size), per_layer).statistic
        lines.append(
            f"2. {model} on {dataset}: RWC rises with depth: **{'held' if rho_depth > 0 else 'did not hold'}** "
            f"(Spearman of mean per-layer RWC vs depth over the {len(features)} feature layers {rho_depth:.2f}; "
            "block means " + ", ".join(f"{b:.4f}" for b in blocks.mean(axis=1)) + f"; classifier head {head_mean:.4f})"
        )
        last, middle = blocks[-1].mean(), blocks[1:-1].mean()
        lines.append(
            f"3. {model} on {dataset}: last block changes less than the middle blocks: "
            f"**{'held' if last < middle else 'did not hold'}** (last {last:.4f}, middle {middle:.4f})"
        )
    for model in sorted({m for m, _ in runs}):
        if (model, "digits") in mean_all and (model, "fashion-mnist") in mean_all:
            simple, harder = mean_all[model, "digits"], mean_all[model, "fashion-mnist"]
            lines.append(
                f"4. {model}: overall RWC lower on the simpler data set (digits): "
                f"**{'held' if simple < harder else 'did not hold'}** (mean all-weights RWC digits {simple:.4f}, "
                f"Fashion-MNIST {harder:.4f})"
            )
            ratios = block_all[model, "fashion-mnist"] / block_all[model, "digits"]
            lines.append(
                f"4. {model}: task complexity shows in the deeper layers (the data sets differ more in the last "
                f"feature block than in the first): **{'held' if ratios[-1] > ratios[0] else 'did not hold'}** "
                "(RWC on Fashion-MNIST over RWC on digits, block by block: "
                + ", ".join(f"{r:.2f}x" for r in ratios)
                + ")"
            )
    return lines


def plot_blocks(runs: dict[tuple[str, str], list[dict]], out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    paths = []
    for (model, dataset), seeds in runs.items():
        all_values = np.nanmean([r["history"].values for r in seeds], axis=0)
        features, head = feature_rows(seeds[0]["history"].layers)
        values = all_values[features]
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        epochs = np.arange(1, values.shape[1] + 1)
        for i, curve in enumerate(block_means(values)):
            ax.plot(epochs, curve, marker="o", label=f"block {i + 1} (by depth)")
        if head:
            ax.plot(epochs, np.nanmean(all_values[head], axis=0), "k--", label="classifier head")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean RWC")
        ax.set_title(f"{model} on {dataset}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"blocks-{model}-{dataset}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def report(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace, command: str, seconds: float) -> str:
    from lightning_rwc.clustering import cluster_layers

    out = Path(args.out)
    lines = [
        "# Replication of the layer-wise weight change findings",
        "",
        f"Command: `{command}`  ",
        f"Settings: {args.epochs} epochs, {args.seeds} seed(s), {args.subset or 'all'} training and "
        f"{args.test_subset or 'all'} test images per data set, SGD lr {args.lr} (momentum 0.9, constant), batch "
        f"{args.batch_size} (AlexNet {args.alexnet_batch_size}: without batch norm it needs more optimizer steps to "
        f"leave its first plateau), {args.accelerator}; total {seconds / 60:.1f} min. Blocks are four equal groups of "
        "the feature (convolution) layers by depth; the classifier head (`fc`, `classifier`) is reported apart.",
        "",
        "## Findings",
        "",
        FINDING_2,
        "",
        *[f"- {line}" for line in findings(runs)],
        "",
        "## Test accuracy",
        "",
        f"Runs below {LEARNED:.2f} (twice chance) did not learn: flagged, and left out of the findings.",
        "",
        "| model | data set | accuracy (mean over seeds) | paper (Fashion-MNIST, 150 epochs) | minutes |",
        "|---|---|---|---|---|",
    ]
    for (model, dataset), seeds in runs.items():
        paper = PAPER_FASHION_ACCURACY[model] if dataset == "fashion-mnist" else ""
        acc = np.mean([r["accuracy"] for r in seeds])
        minutes = sum(r["seconds"] for r in seeds) / 60
        flag = "" if learned(seeds) else " (did not learn)"
        lines.append(f"| {model} | {dataset} | {acc:.3f}{flag} | {paper} | {minutes:.1f} |")
    lines += ["", f"## Clusters ({args.cluster_method}, first seed)", ""]
    for (model, dataset), seeds in runs.items():
        try:
            result = cluster_layers(seeds[0]["history"], method=args.cluster_method)
            lines.append(f"### {model} on {dataset}\n\n{result.markdown()}\n")
        except ValueError as err:
            lines.append(f"### {model} on {dataset}\n\nnot clustered: {err}\n")
    lines += ["## Per-block mean RWC", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plot_blocks(runs, out)]
    return "\n".join(lines) + "\n"


def findings_again(folder: Path) -> Path:
    """Rewrite the findings of ``folder/report.md`` from ``histories.json`` and the accuracies in the report."""
    import json
    import re

    from lightning_rwc.history import RWCHistory

    missing = [name for name in ("report.md", "histories.json") if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"error: {folder} has no {' or '.join(missing)}: pass the folder of an earlier report")
    text = (folder / "report.md").read_text()
    accuracy = {
        (model, dataset): float(acc)
        for model, dataset, acc in re.findall(r"^\| (\w+) \| ([\w-]+) \| ([\d.]+)", text, flags=re.M)
    }
    runs: dict[tuple[str, str], list[dict]] = {}
    for key, histories in json.loads((folder / "histories.json").read_text()).items():
        model, dataset = key.split("/")
        for state in histories:
            history = RWCHistory()
            history.load_state_dict(state)
            runs.setdefault((model, dataset), []).append({"history": history, "accuracy": accuracy[model, dataset]})
    head, rest = text.split("## Findings\n", 1)
    tail = rest[rest.index("## Test accuracy") :]
    for (model, dataset), acc in accuracy.items():  # the table says which runs did not learn
        if acc < LEARNED:
            row = re.compile(rf"^(\| {model} \| {dataset} \| [\d.]+)( \|)", flags=re.M)
            tail = row.sub(r"\1 (did not learn)\2", tail)
    note = f"Findings written again from `histories.json` by `python -m benchmarks.replicate --findings-of {folder}`."
    lines = [note, "", FINDING_2, "", *[f"- {line}" for line in findings(runs)], "", ""]
    (folder / "report.md").write_text(head + "## Findings\n\n" + "\n".join(lines) + tail)
    return folder / "report.md"


def main(argv: Sequence[str] | None = None) -> Path:
    import sys

    args = parse_args(argv)
    if args.findings_of:
        return findings_again(Path(args.findings_of))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs: dict[tuple[str, str], list[dict]] = {}
    for dataset in args.datasets:
        try:
            arrays = load(dataset, args.data_dir)
        except FileNotFoundError as err:
            raise SystemExit(f"error: {err}") from err
        for model in args.models:
            runs[model, dataset] = [train_one(model, dataset, seed, arrays, args) for seed in range(args.seeds)]
            print(f"{model} on {dataset}: accuracy {np.mean([r['accuracy'] for r in runs[model, dataset]]):.3f}")
    command = "python -m benchmarks.replicate " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(runs, args, command.strip(), time.perf_counter() - start)
    (out / "report.md").write_text(text)
    summary = {f"{m}/{d}": [r["history"].as_json() for r in seeds] for (m, d), seeds in runs.items()}
    write_json(out / "histories.json", summary)
    print(text)
    return out / "report.md"


if __name__ == "__main__":
    main()
