"""Why RWC falls or rises with depth: one factor at a time around a baseline, three seeds each.

Two small convolutional networks (a VGG-style stack of six 3x3 convolutions and a ResNet-style network with three
residual stages) learn scikit-learn's digits (8 x 8, 1,437 training and 360 test images). The baseline has batch
normalisation after every convolution and is trained with SGD (momentum 0.9, learning rate 0.05, weight decay 5e-4)
for 20 epochs; each other setting changes one thing: no batch normalisation, no weight decay, both, AdamW, a lower
learning rate, 60 epochs, no downsampling (every layer at full resolution), one width for every layer. Every run
measures, for every layer, the RWC of each epoch in three norms (l1, l2, elementwise), the l2 RWC of every step, and
the weight norms at each epoch end.

Reported per setting (mean and spread over the seeds): Spearman's correlation of RWC with depth over the
convolutions (per epoch, and of each layer's mean over the epochs), per-block means, the growth of the weight
norms, test accuracy, and, for normalised layers trained with weight decay, the per-step l2 RWC at the end of
training beside the equilibrium that the theory of normalised networks predicts (``sqrt(2 lr wd / (1 + momentum))``
for SGD, ``sqrt(2 lr wd)`` for AdamW: Wan et al. 2021, Kosson et al. 2023).

``python -m benchmarks.depth_study`` writes ``benchmarks/results/depth-study/`` (``report.md``, ``summary.json``,
figures); ``--quick`` is a two-epoch smoke run; ``--device cuda`` runs it on a GPU, ``--seeds`` sets the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).parent / "results" / "depth-study"


@dataclass(frozen=True)
class Setting:
    """One training configuration."""

    name: str
    batchnorm: bool = True
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    lr: float = 0.05
    epochs: int = 20
    downsample: bool = True
    width: int | None = None
    """Every convolution this wide (``None``: the networks' own widths, growing with depth)."""

    def predicted_first_step(self, fan_in: int) -> float | None:
        """The l2 RWC of Adam's first step for a layer of ``fan_in`` inputs, ``lr * sqrt(3 fan_in)``; ``None`` for SGD.

        Adam's first update is ``lr`` times the sign of each gradient; PyTorch's default initialisation draws weights
        uniformly within ``1 / sqrt(fan_in)``, so that ``||W||_2 = sqrt(n / (3 fan_in))`` for ``n`` weights.
        """
        return self.lr * math.sqrt(3 * fan_in) if self.optimizer == "adamw" else None

    def predicted_step_rwc(self) -> float | None:
        """The equilibrium per-step l2 RWC of a normalised layer, where the theory gives one."""
        if not self.batchnorm or self.weight_decay == 0:
            return None
        if self.optimizer == "sgd":
            return math.sqrt(2 * self.lr * self.weight_decay / (1 + 0.9))
        return math.sqrt(2 * self.lr * self.weight_decay)


BASE = Setting("baseline (BN, SGD, wd 5e-4, lr 0.05, 20 epochs)")
SETTINGS = [
    BASE,
    replace(BASE, name="no batch norm", batchnorm=False),
    replace(BASE, name="no weight decay", weight_decay=0.0),
    replace(BASE, name="no batch norm, no weight decay", batchnorm=False, weight_decay=0.0),
    replace(BASE, name="AdamW (lr 1e-3, wd 0.05)", optimizer="adamw", lr=1e-3, weight_decay=0.05),
    replace(BASE, name="lr 0.01", lr=0.01),
    replace(BASE, name="60 epochs", epochs=60),
    replace(BASE, name="no downsampling (every layer at 8 x 8)", downsample=False),
    replace(BASE, name="constant width (32 channels)", width=32),
    replace(BASE, name="no downsampling, constant width", downsample=False, width=32),
]


def conv_block(cin: int, cout: int, batchnorm: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm), *([nn.BatchNorm2d(cout)] if batchnorm else [])]


class VGGish(nn.Module):
    """Six 3x3 convolutions (16-32, pool, 32-64, pool, 64-64), global pooling, a linear head."""

    def __init__(self, setting: Setting, channels: int = 1) -> None:
        super().__init__()
        layers, cin, batchnorm = [], channels, setting.batchnorm
        for cout in (16, 32, "pool", 32, 64, "pool", 64, 64):
            if cout == "pool":
                layers += [nn.MaxPool2d(2)] if setting.downsample else []
                continue
            cout = setting.width or cout
            layers += [*conv_block(cin, cout, batchnorm), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Block(nn.Module):
    """A residual block of two 3x3 convolutions (stride on the first), with a 1x1 projection when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*conv_block(cin, cout, batchnorm))
        self.conv2 = nn.Sequential(*conv_block(cout, cout, batchnorm))
        self.conv1[0].stride = (stride, stride)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            projection = nn.Conv2d(cin, cout, 1, stride=stride, bias=not batchnorm)
            self.shortcut = nn.Sequential(projection, *([nn.BatchNorm2d(cout)] if batchnorm else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class ResNetish(nn.Module):
    """A 3x3 stem and three residual stages (16, 32, 64 channels), global pooling, a linear head."""

    def __init__(self, setting: Setting, channels: int = 1) -> None:
        super().__init__()
        bn = setting.batchnorm
        stride = 2 if setting.downsample else 1
        w = [setting.width or width for width in (16, 32, 64)]
        self.stem = nn.Sequential(*conv_block(channels, w[0], bn), nn.ReLU())
        self.stages = nn.Sequential(
            Block(w[0], w[0], 1, bn), Block(w[0], w[1], stride, bn), Block(w[1], w[2], stride, bn)
        )
        self.head = nn.Linear(w[2], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


ARCHITECTURES = {"vgg": VGGish, "resnet": ResNetish}


def digits(device: torch.device) -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits, standardised, split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0 - 0.3) / 0.4
    x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.2, random_state=0)
    as_tensor = lambda a, dtype: torch.tensor(a, dtype=dtype, device=device)  # noqa: E731
    return (
        as_tensor(x_train[:, None], torch.float32),
        as_tensor(y_train, torch.long),
        as_tensor(x_test[:, None], torch.float32),
        as_tensor(y_test, torch.long),
    )


def train_one(arch: str, setting: Setting, seed: int, data: tuple, device: torch.device) -> dict[str, Any]:
    """Train once; the per-layer measurements of every epoch and step, the weight norms and the test accuracy."""
    from lightning_rwc import WeightChangeTracker

    torch.manual_seed(seed)
    model = ARCHITECTURES[arch](setting).to(device)
    if setting.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=0.9, weight_decay=setting.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr, weight_decay=setting.weight_decay)
    by_epoch = {norm: WeightChangeTracker(model, norm=norm) for norm in ("l1", "l2", "elementwise")}
    by_step = WeightChangeTracker(model, norm="l2")
    layers = by_step.names
    weights = dict(model.named_parameters())
    x_train, y_train, x_test, y_test = data
    generator = torch.Generator(device="cpu").manual_seed(seed)
    epochs, steps, norms = {norm: [] for norm in by_epoch}, [], [[weights[n].norm().item() for n in layers]]
    steps_per_epoch = math.ceil(len(x_train) / 64)
    for _ in range(setting.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(device)
        for start in range(0, len(x_train), 64):
            batch = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values = by_step.step()
            steps.append([values[n] for n in layers])
        for norm, tracker in by_epoch.items():
            values = tracker.step()
            epochs[norm].append([values[n] for n in layers])
        norms.append([weights[n].norm().item() for n in layers])
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    last_epoch = np.array(steps[-steps_per_epoch:])
    return {
        "layers": layers,
        "fan_in": [int(np.prod(weights[n].shape[1:])) for n in layers],
        "first_step_l2": steps[0],
        "by_epoch": {norm: np.array(rows).T for norm, rows in epochs.items()},  # (layers, epochs)
        "last_epoch_step_l2": np.exp(np.log(last_epoch).mean(axis=0)),  # geometric mean over the last epoch's steps
        "norms": np.array(norms).T,  # (layers, epochs + 1)
        "accuracy": accuracy,
    }


def spearman(values: np.ndarray) -> float:
    """Spearman's correlation of ``values`` with their position (depth)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.arange(len(values)), values).statistic)


def summarise(arch: str, setting: Setting, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: the depth trend per norm and epoch, block means, norms, accuracy, prediction; over seeds."""
    layers = runs[0]["layers"]
    body = [i for i, name in enumerate(layers) if not name.startswith("head")]
    out: dict[str, Any] = {"arch": arch, "setting": asdict(setting), "layers": layers, "body": body}
    for norm in ("l1", "l2", "elementwise"):
        per_epoch = np.array([[spearman(r["by_epoch"][norm][body, e]) for e in range(setting.epochs)] for r in runs])
        overall = [spearman(r["by_epoch"][norm][body].mean(axis=1)) for r in runs]
        out[norm] = {
            "spearman_per_epoch_mean": per_epoch.mean(axis=0).tolist(),
            "spearman_per_epoch_sd": per_epoch.std(axis=0).tolist(),
            "spearman_overall": overall,
            "layer_means": np.mean([r["by_epoch"][norm].mean(axis=1) for r in runs], axis=0).tolist(),
        }
    step_l2 = np.array([r["last_epoch_step_l2"] for r in runs])
    out["last_epoch_step_l2"] = step_l2.mean(axis=0).tolist()
    out["last_epoch_step_l2_spearman"] = [spearman(row[body]) for row in step_l2]
    out["first_step_l2"] = np.mean([r["first_step_l2"] for r in runs], axis=0).tolist()
    out["predicted_first_step_l2"] = [setting.predicted_first_step(f) for f in runs[0]["fan_in"]]
    out["fan_in"] = runs[0]["fan_in"]
    out["norm_growth"] = np.mean([r["norms"][:, -1] / r["norms"][:, 0] for r in runs], axis=0).tolist()
    out["norms_mean"] = np.mean([r["norms"] for r in runs], axis=0).tolist()
    out["accuracy"] = [r["accuracy"] for r in runs]
    out["predicted_step_l2"] = setting.predicted_step_rwc()
    return out


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):+.2f} ± {statistics.pstdev(values):.2f}"


def report(summaries: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Depth study: what sets the sign of RWC's depth trend",
        "",
        f"`python -m benchmarks.depth_study {' '.join(args.argv)}` on {platform_name()}, {seconds / 60:.1f} min; "
        f"digits, {args.seeds} seeds per setting. Spearman: RWC of each convolution (the head left out) against "
        "its depth; `overall` uses each layer's mean over the epochs; per-step l2: the geometric mean over the last "
        "epoch's steps of the body's layers.",
        "",
    ]
    for arch in ARCHITECTURES:
        rows = [s for s in summaries if s["arch"] == arch]
        if not rows:
            continue
        lines += [f"## {arch}", ""]
        lines += [
            "| setting | test accuracy | Spearman l1 overall | l1 first / last epoch | Spearman l2 overall | "
            "Spearman elementwise overall | per-step l2 RWC, last epoch (body) | predicted | norm growth first / "
            "last conv |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in rows:
            first_last = f"{s['l1']['spearman_per_epoch_mean'][0]:+.2f} / {s['l1']['spearman_per_epoch_mean'][-1]:+.2f}"
            body_step = np.array(s["last_epoch_step_l2"])[s["body"]]
            predicted = s["predicted_step_l2"]
            accuracy = statistics.mean(s["accuracy"])
            lines.append(
                f"| {s['setting']['name']} | {accuracy:.3f} | {mean_sd(s['l1']['spearman_overall'])} "
                f"| {first_last} | {mean_sd(s['l2']['spearman_overall'])} | "
                f"{mean_sd(s['elementwise']['spearman_overall'])} | {body_step.min():.4f}-{body_step.max():.4f} "
                f"(median {np.median(body_step):.4f}) | {'' if predicted is None else f'{predicted:.4f}'} | "
                f"{s['norm_growth'][s['body'][0]]:.2f} / {s['norm_growth'][s['body'][-1]]:.2f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def platform_name() -> str:
    from benchmarks.tables import cpu_name

    return cpu_name() if not torch.cuda.is_available() else torch.cuda.get_device_name()


def save(fig: Any, axes: Any, ylabel: str, path: Path) -> Path:
    """Label, add the legend where there are lines, and write one figure."""
    import matplotlib.pyplot as plt

    axes[0].set_ylabel(ylabel)
    if axes[-1].lines:
        axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figures(summaries: list[dict[str, Any]], out: Path) -> list[Path]:
    """Spearman per epoch (l1) per setting; per-step l2 RWC against depth with the prediction; weight norms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, arch in zip(axes, ARCHITECTURES, strict=True):
        for s in (s for s in summaries if s["arch"] == arch):
            mean, sd = np.array(s["l1"]["spearman_per_epoch_mean"]), np.array(s["l1"]["spearman_per_epoch_sd"])
            epochs = np.arange(1, len(mean) + 1)
            ax.plot(epochs, mean, label=s["setting"]["name"])
            ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.15)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title=f"{arch}: Spearman(RWC l1, depth) per epoch", xlabel="epoch", xscale="log")
    paths.append(save(fig, axes, "Spearman over the convolutions", out / "spearman_per_epoch.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, arch in zip(axes, ARCHITECTURES, strict=True):
        for k, s in enumerate(s for s in summaries if s["arch"] == arch):
            body = s["body"]
            ax.plot(range(len(body)), np.array(s["last_epoch_step_l2"])[body], "o-", ms=3, label=s["setting"]["name"])
            if s["predicted_step_l2"] is not None:
                ax.axhline(s["predicted_step_l2"], ls="--", lw=1, color=f"C{k}")
        ax.set(title=f"{arch}: per-step l2 RWC, last epoch (dashed: predicted)", xlabel="depth (convolution)")
        ax.set_yscale("log")
    paths.append(save(fig, axes, "RWC per step (l2)", out / "step_rwc_vs_depth.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, arch in zip(axes, ARCHITECTURES, strict=True):
        for k, s in enumerate(s for s in summaries if s["arch"] == arch):
            body = s["body"]
            ax.plot(
                range(len(body)),
                np.array(s["first_step_l2"])[body],
                "o-",
                ms=3,
                label=s["setting"]["name"],
                color=f"C{k}",
            )
            predicted = [s["predicted_first_step_l2"][i] for i in body]
            if predicted[0] is not None:
                ax.plot(range(len(body)), predicted, "k--", lw=1, label="predicted for Adam: lr sqrt(3 fan_in)")
        ax.set(title=f"{arch}: l2 RWC of the first step", xlabel="depth (convolution)", yscale="log")
    paths.append(save(fig, axes, "RWC of step 1 (l2)", out / "first_step_vs_depth.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    wanted = {"baseline (BN, SGD, wd 5e-4, lr 0.05, 20 epochs)": axes[0], "no weight decay": axes[1]}
    for s in (s for s in summaries if s["arch"] == "vgg" and s["setting"]["name"] in wanted):
        ax = wanted[s["setting"]["name"]]
        for i in s["body"]:
            ax.plot(s["norms_mean"][i], color=plt.cm.viridis(i / len(s["body"])), label=s["layers"][i])
        ax.set(title=f"vgg, {s['setting']['name']}: weight norms", xlabel="epoch", yscale="log")
    paths.append(save(fig, axes, "||W||_2", out / "weight_norms.png"))
    return paths


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one network, two settings, 2 epochs, 1 seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--from-summary", action="store_true", help="remake the figures from OUT/summary.json")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    device, out = torch.device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_summary:
        figures(json.loads((out / "summary.json").read_text()), out)
        return out / "report.md"
    settings, archs = SETTINGS, list(ARCHITECTURES)
    if args.quick:
        settings, archs, args.seeds = [replace(s, epochs=2) for s in SETTINGS[:2]], ["vgg"], 1
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data, start, summaries = digits(device), time.perf_counter(), []
    for arch in archs:
        for setting in settings:
            runs = [train_one(arch, setting, seed, data, device) for seed in range(args.seeds)]
            summaries.append(summarise(arch, setting, runs))
            overall, accuracy = summaries[-1]["l1"]["spearman_overall"], statistics.mean(summaries[-1]["accuracy"])
            print(f"{arch:7s} {setting.name:50s} Spearman l1 {mean_sd(overall)}  accuracy {accuracy:.3f}")
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    (out / "report.md").write_text(report(summaries, args, time.perf_counter() - start))
    figures(summaries, out)
    return out / "report.md"


if __name__ == "__main__":
    main()
