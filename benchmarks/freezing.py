"""Layer freezing from RWC against no freezing, FreezeOut's schedule and AutoFreeze's criterion, on real data.

``python -m benchmarks.freezing [--seeds 3] [--accelerator gpu --full] [--out DIR]`` (``--smoke``: a tiny run)

Three settings, and a fourth on request (``--settings``):

- **fine-tuning**: ResNet-18 adapted to small grey images (as in the demo), pretrained on Fashion-MNIST's classes
  0-4, then fine-tuned on classes 5-9 with a new head;
- **fine-tuning (BERT)**: a BERT of 4 layers of width 64 built from a config (nothing downloaded), reading
  scikit-learn's digits as sequences of 64 pixel tokens, pretrained to tell the ten digits apart, then fine-tuned
  with a new head on another task: whether the digit is odd;
- **from scratch**: ResNet-18 trained on scikit-learn's digits;
- **fine-tuning (BERT, Fashion-MNIST)**: the same BERT reading Fashion-MNIST pooled to 7 x 7 (49 pixel tokens),
  pretrained on classes 0-4 and fine-tuned on classes 5-9 with a new head, as the ResNet-18 is (a test set of 2,000
  images: 0.05 points an image, where the digits give 0.28).

On the CPU (the default) Fashion-MNIST is average-pooled to 14 x 14 and subsets are used, so that everything runs
in about 15 minutes on 2 cores; ``--full`` uses all images at 28 x 28 (for a GPU). Contenders, each run once per
seed, interleaved, on the same machine:

- ``none``: no freezing;
- ``FreezeOut``: block ``i`` of ``B`` (the head excluded) freezes at ``t_i = t_0 + (1 - t_0) (i / (B - 1))^3`` of
  training with ``t_0 = 0.5`` (the cubic schedule of Brock et al., arXiv 1706.04983, without their per-layer
  learning-rate annealing);
- ``AutoFreeze``: every quarter epoch, the change rate of each block's gradient norm over the interval is compared
  with the median rate of the blocks still training, and the front blocks below it freeze (after Liu et al., arXiv
  2102.01386, which freezes front layers whose gradient-norm change rate falls below a percentile); the frozen
  front's outputs are cached, as in that paper;
- ``LayerFreezer``: :class:`lightning_rwc.LayerFreezer`, fed by ``RelativeWeightChange`` every quarter epoch, with
  its defaults from scratch and, for fine-tuning (pretrained front blocks settle within the first epochs), with
  ``warmup=1, patience=1, max_fraction=1.0`` (from ``--sweep fast`` on seed 0: ``sweep-fast.md``; the threshold
  stays at its default, 0.5, for every fine-tuning task: 0.6 was faster on ResNet-18 but froze the BERT early
  enough to cost it points; ``--threshold`` and ``--warmup`` set others);
- ``LayerFreezer+cache``: the same with ``cache=True``.

All of them freeze through :class:`lightning_rwc.BlockFreezer` (``requires_grad=False``, gradients dropped, frozen
modules in eval mode), on the same blocks; they differ only in when, and in caching. Reported: training time
(evaluation excluded), speed-up over ``none``, test accuracy (mean and spread over seeds), the cache's hit rate and
size at the end, when each block froze, the test accuracy at each epoch's end, and a figure of accuracy against time.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch import Callback
from torch import nn

from lightning_rwc import BlockFreezer, LayerFreezer, RelativeWeightChange
from lightning_rwc.demo import (
    load_digits_arrays,
    load_fashion_mnist_arrays,
    make_classifier,
    resnet18_for_small_grey_images,
)
from lightning_rwc.front import FrontCache
from lightning_rwc.measure import select_parameters
from lightning_rwc.parts import History, Loggers

CONTENDERS = ("none", "FreezeOut", "AutoFreeze", "LayerFreezer", "LayerFreezer+cache")
SETTINGS = ("fine-tuning", "fine-tuning (BERT)", "fine-tuning (BERT, Fashion-MNIST)", "from scratch")
FINE_TUNING = {"warmup": 1, "patience": 1, "max_fraction": 1.0}  # from `--sweep fast` (sweep-fast.md)


class Clock(Callback):
    """Training time without the evaluations, and the test accuracy at every epoch end."""

    def __init__(self, test: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.test, self.points, self.seconds, self._start, self.cached_bytes = test, [], 0.0, 0.0, 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._start
        self.points.append((self.seconds, accuracy(pl_module.model, *self.test)))
        caches = [cache_of(callback) for callback in trainer.callbacks]  # its size before it is let go at the end
        self.cached_bytes = max([self.cached_bytes, *(cache.size for cache in caches if cache is not None)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy, every module's train/eval mode restored afterwards (frozen batch norms stay in eval)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        batches = zip(x.split(512), y.split(512), strict=True)
        hits = sum((model(xb.to(device)).argmax(1).cpu() == yb).sum().item() for xb, yb in batches)
    for module, training in modes:
        module.train(training)
    return hits / len(y)


class _Contender(Callback):
    """A freezing rule of another method, acting through a BlockFreezer (with a cache, or not)."""

    def __init__(self, cache: bool = False) -> None:
        self.cache, self.freezer = cache, None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = [name for name, _ in select_parameters(pl_module)]  # LayerFreezer's blocks; its decisions unused
        self.freezer = BlockFreezer(pl_module, names, cache=FrontCache() if self.cache else None)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.freezer.keep_eval()  # Lightning puts every module back in train mode at each epoch's start

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.freezer.cache is not None:
            self.freezer.cache.detach()


class ScheduledFreezer(_Contender):
    """FreezeOut's cubic schedule: block ``i`` freezes at ``t0 + (1 - t0) (i / (B - 1))^3`` of the training steps."""

    def __init__(self, t0: float = 0.5) -> None:
        super().__init__()
        self.t0, self.times = t0, {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        blocks = [b for b in self.freezer.policy.blocks if b not in self.freezer.policy.keep]
        last = max(len(blocks) - 1, 1)
        self.times = {b: self.t0 + (1 - self.t0) * (i / last) ** 3 for i, b in enumerate(blocks)}

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        progress = trainer.global_step / trainer.estimated_stepping_batches
        due = [b for b, t in self.times.items() if t <= progress and b not in self.freezer.policy.frozen]
        if due:
            self.freezer.policy.frozen.update(dict.fromkeys(due, trainer.global_step))
            self.freezer.freeze(due)


class GradientNormFreezer(_Contender):
    """AutoFreeze's criterion: front blocks whose gradient-norm change rate is below the median rate freeze."""

    def __init__(self, intervals_per_epoch: int = 4) -> None:
        super().__init__(cache=True)
        self.intervals_per_epoch = intervals_per_epoch
        self.squares: dict[str, float] = {}
        self.previous: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.interval = max(trainer.num_training_batches // self.intervals_per_epoch, 1)
        owners = self.freezer._owners
        self.params = {b: [p for p in pl_module.parameters() if b in owners.get(id(p), ())] for b in self._open()}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        for block in self._open():
            grads = [p.grad for p in self.params[block] if p.grad is not None]
            if grads:
                norms = torch.stack(torch._foreach_norm(grads))
                self.squares[block] = self.squares.get(block, 0.0) + float(norms.square().sum())

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step % self.interval:
            return
        norms = {block: self.squares.get(block, 0.0) ** 0.5 for block in self._open()}
        rates = {b: abs(n - self.previous[b]) / self.previous[b] for b, n in norms.items() if self.previous.get(b)}
        self.previous, self.squares = norms, {}
        if len(rates) < 2:
            return
        median = statistics.median(rates.values())
        chosen = []
        for block in self._open():
            if rates.get(block, median) >= median:
                break
            chosen.append(block)
        chosen = chosen[: max(self.freezer.policy.limit - len(self.freezer.policy.frozen), 0)]
        if chosen:
            self.freezer.policy.frozen.update(dict.fromkeys(chosen, trainer.global_step))
            self.freezer.freeze(chosen)

    def _open(self) -> list[str]:
        policy = self.freezer.policy
        return [b for b in policy.blocks if b not in policy.keep and b not in policy.frozen]


def contender(name: str, steps_per_epoch: int, **settings: Any) -> tuple[list[Callback], Any]:
    """The callbacks of one contender (``settings`` for LayerFreezer), and the object that says what froze when."""
    if name == "FreezeOut":
        scheduled = ScheduledFreezer()
        return [scheduled], scheduled
    if name == "AutoFreeze":
        gradients = GradientNormFreezer()
        return [gradients], gradients
    if name.startswith("LayerFreezer"):
        every = max(steps_per_epoch // 4, 1)
        rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=every, parts=[History(), Loggers()])
        freezer = LayerFreezer(**settings, cache=name.endswith("+cache"))
        return [rwc, freezer], freezer
    return [], None


def frozen_of(holder: Any) -> dict[str, int]:
    if holder is None:
        return {}
    if isinstance(holder, LayerFreezer):
        return holder.frozen
    return dict(holder.freezer.policy.frozen) if holder.freezer is not None else {}


def cache_of(holder: Any) -> FrontCache | None:
    """The contender's front cache, if it has one."""
    if isinstance(holder, LayerFreezer):
        return holder.cache
    return getattr(getattr(holder, "freezer", None), "cache", None)


def run(
    module: pl.LightningModule,
    name: str,
    data: dict,
    epochs: int,
    batch: int,
    seed: int,
    accelerator: str,
    **settings: Any,
) -> dict[str, Any]:
    x, y = data["train"]
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch, shuffle=True, generator=generator)
    callbacks, holder = contender(name, len(loader), **settings)
    clock = Clock(data["test"])
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        callbacks=[*callbacks, clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    cache = cache_of(holder)
    seen = (cache.hits + cache.misses) if cache is not None else 0
    return {
        "seconds": clock.seconds,
        "accuracy": clock.points[-1][1],
        "points": clock.points,
        "frozen": frozen_of(holder),
        "hit_rate": cache.hits / seen if seen else None,
        "cached_bytes": clock.cached_bytes,
    }


def tensors(arrays: tuple[np.ndarray, np.ndarray], pool: int, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.from_numpy(np.ascontiguousarray(arrays[0][:limit])), torch.from_numpy(arrays[1][:limit]).long()
    return (nn.functional.avg_pool2d(x, pool) if pool > 1 else x), y


def classes(data: tuple[torch.Tensor, torch.Tensor], keep: range) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data
    mask = (y >= keep.start) & (y < keep.stop)
    return x[mask], y[mask] - keep.start


def fine_tuning_data(args: argparse.Namespace) -> tuple[dict, dict]:
    arrays = load_fashion_mnist_arrays(args.data_dir)
    pool, limit = (1, None) if args.full else (2, None)
    train, test = tensors(arrays["train"], pool, limit), tensors(arrays["test"], pool, limit)
    size = None if args.full else args.subset
    first = {"train": _head(classes(train, range(0, 5)), size), "test": _head(classes(test, range(0, 5)), size)}
    tests = None if args.full else args.test_subset
    second = {"train": _head(classes(train, range(5, 10)), size), "test": _head(classes(test, range(5, 10)), tests)}
    return first, second


def _head(data: tuple[torch.Tensor, torch.Tensor], n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return data[0][:n], data[1][:n]


def scratch_data() -> dict:
    arrays = load_digits_arrays()
    return {split: tensors(arrays[split], 1, None) for split in ("train", "test")}


def pretrained(first: dict, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """ResNet-18 trained on the first five classes: the starting weights of every fine-tuning run."""
    pl.seed_everything(0, verbose=False)
    module = make_classifier(resnet18_for_small_grey_images(num_classes=5), lr=args.lr, num_classes=5)
    result = run(module, "none", first, args.pretrain_epochs, args.batch_size, 0, args.accelerator)
    print(f"pretrained on classes 0-4: accuracy {result['accuracy']:.3f} in {result['seconds']:.0f} s")
    return {k: v.clone() for k, v in module.model.state_dict().items()}


def fine_tuning_module(weights: dict[str, torch.Tensor], lr: float) -> pl.LightningModule:
    model = resnet18_for_small_grey_images(num_classes=5)
    model.load_state_dict(weights)
    model.fc = nn.Linear(model.fc.in_features, 5)  # a new head for the new classes
    return make_classifier(model, lr=lr, num_classes=5)


class _Tokens(nn.Module):
    """A BERT classifier that reads a batch of token ids and gives logits."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=tokens).logits


def bert_classifier(classes: int) -> nn.Module:
    """BERT of 4 layers of width 64 over a vocabulary of 17 grey levels and a leading class token."""
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(
        num_hidden_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=18,
        max_position_embeddings=65,
        num_labels=classes,
    )
    return _Tokens(transformers.BertForSequenceClassification(config))


def pixel_tokens(split: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] as tokens: a class token (0), then each pixel's grey level (1-17)."""
    x, y = split
    pixels = torch.round(x.reshape(len(x), -1) * 16).long() + 1
    return torch.cat([torch.zeros(len(x), 1, dtype=torch.long), pixels], dim=1), y.long()


def bert_data() -> tuple[dict, dict]:
    """The ten digits (pretraining), and whether each digit is odd (fine-tuning), on the same images."""
    arrays = load_digits_arrays()
    first = {split: pixel_tokens(tuple(map(torch.from_numpy, arrays[split]))) for split in ("train", "test")}
    second = {split: (tokens, labels % 2) for split, (tokens, labels) in first.items()}
    return first, second


def fashion_tokens(data: tuple[dict, dict]) -> tuple[dict, dict]:
    """The fine-tuning task's two halves of Fashion-MNIST (14 x 14) pooled to 7 x 7, as pixel tokens."""
    pooled = lambda x, y: pixel_tokens((nn.functional.avg_pool2d(x, 2), y))  # noqa: E731
    return tuple({split: pooled(*pair) for split, pair in half.items()} for half in data)


def adamw(module: pl.LightningModule, lr: float) -> pl.LightningModule:
    """``module`` trained with AdamW (transformers learn little with SGD in a few epochs)."""
    module.configure_optimizers = lambda: torch.optim.AdamW(module.parameters(), lr=lr)
    return module


def pretrained_bert(first: dict, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """BERT trained on the first task: the starting weights of every BERT fine-tuning run."""
    pl.seed_everything(0, verbose=False)
    module = adamw(make_classifier(bert_classifier(10), lr=args.bert_lr, num_classes=10), args.bert_lr)
    result = run(module, "none", first, args.bert_pretrain_epochs, 32, 0, args.accelerator)
    print(f"BERT pretrained: accuracy {result['accuracy']:.3f} in {result['seconds']:.0f} s")
    return {k: v.clone() for k, v in module.model.state_dict().items()}


def bert_module(weights: dict[str, torch.Tensor], lr: float, classes: int = 2) -> pl.LightningModule:
    model = bert_classifier(10)
    model.load_state_dict(weights)
    model.bert.classifier = nn.Linear(model.bert.classifier.in_features, classes)  # a new head for the new task
    model.bert.num_labels = classes
    return adamw(make_classifier(model, lr=lr, num_classes=classes), lr)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--full", action="store_true", help="all of Fashion-MNIST at 28 x 28 (for a GPU)")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--subset", type=int, default=1500, help="training images per five classes (CPU)")
    parser.add_argument("--test-subset", type=int, default=2000, help="test images of classes 5-9 (CPU)")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs")
    parser.add_argument("--scratch-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--bert-pretrain-epochs", type=int, default=20)
    parser.add_argument("--bert-epochs", type=int, default=6)
    parser.add_argument("--bert-lr", type=float, default=1e-3)
    parser.add_argument("--threshold", type=float, help="LayerFreezer's threshold for fine-tuning (default: 0.5)")
    parser.add_argument("--warmup", type=int, help="LayerFreezer's fine-tuning warmup, in measurements (default: 1)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=[s for s in SETTINGS if "Fashion" not in s])
    parser.add_argument("--out", default="benchmarks/results/freezing-cpu")
    parser.add_argument("--smoke", action="store_true", help="one seed, tiny subsets, one epoch (for the test suite)")
    parser.add_argument(
        "--sweep", nargs="?", const="defaults", choices=["defaults", "fast"], help="fine-tuning, one seed: settings"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.subset, args.test_subset = 1, 64, 64
        args.pretrain_epochs = args.epochs = args.scratch_epochs = args.bert_pretrain_epochs = args.bert_epochs = 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, dict[str, list[dict]]] = {}
    if args.sweep:
        first, second = fine_tuning_data(args)
        weights = pretrained(first, args)
        report = _sweep(lambda: fine_tuning_module(weights, args.lr / 2), second, args)
        name = "sweep.md" if args.sweep == "defaults" else "sweep-fast.md"
        (out / name).write_text(report)
        print(report)
        return out / name
    chosen = {"threshold": args.threshold, "warmup": args.warmup}
    tuning = FINE_TUNING | {key: value for key, value in chosen.items() if value is not None}
    if "fine-tuning" in args.settings:
        first, second = fine_tuning_data(args)
        weights = pretrained(first, args)
        build = lambda: fine_tuning_module(weights, args.lr / 2)  # noqa: E731
        results["fine-tuning"] = _compare(build, second, args.epochs, args, tuning)
    if "fine-tuning (BERT)" in args.settings:
        first, second = bert_data()
        weights = pretrained_bert(first, args)
        build = lambda: bert_module(weights, args.bert_lr / 2)  # noqa: E731
        results["fine-tuning (BERT)"] = _compare(build, second, args.bert_epochs, args, tuning, batch=32)
    if "fine-tuning (BERT, Fashion-MNIST)" in args.settings:
        first, second = fashion_tokens(fine_tuning_data(args))
        weights = pretrained_bert(first, args)
        build = lambda: bert_module(weights, args.bert_lr / 2, classes=5)  # noqa: E731
        results["fine-tuning (BERT, Fashion-MNIST)"] = _compare(build, second, args.bert_epochs, args, tuning, batch=32)
    if "from scratch" in args.settings:
        digits = scratch_data()
        build = lambda: make_classifier(resnet18_for_small_grey_images(), lr=args.lr)  # noqa: E731
        results["from scratch"] = _compare(build, digits, args.scratch_epochs, args, {})
    command = "python -m benchmarks.freezing " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = _report(results, args, command.strip(), time.perf_counter() - start)
    (out / "report.md").write_text(report)
    _figure(results, out / "accuracy-vs-time.png")
    print(report)
    return out / "report.md"


def _compare(
    build: Any, data: dict, epochs: int, args: argparse.Namespace, settings: dict, batch: int | None = None
) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for seed in range(args.seeds):
        for name in CONTENDERS:  # interleaved: drift of the machine hits every contender alike
            pl.seed_everything(seed, verbose=False)
            options = settings if name.startswith("LayerFreezer") else {}
            result = run(build(), name, data, epochs, batch or args.batch_size, seed, args.accelerator, **options)
            runs[name].append(result)
            summary = f"{result['seconds']:.1f} s, accuracy {result['accuracy']:.3f}, {result['frozen']}"
            print(f"seed {seed} {name}: {summary}")
    return runs


SWEEP = [
    {"threshold": threshold, "patience": patience, "warmup": warmup, "max_fraction": 0.75}
    for threshold in (0.1, 0.2, 0.3, 0.5)
    for patience, warmup in ((2, 2), (3, 3))
]
FAST_SWEEP = [  # quicker decisions, for fine-tuning with the cache (``--sweep fast``)
    {"threshold": threshold, "patience": 1, "warmup": 1, "max_fraction": fraction}
    for fraction in (0.8, 1.0)
    for threshold in (0.5, 0.6, 0.7, 0.8)
]


def _sweep(build: Any, data: dict, args: argparse.Namespace) -> str:
    """LayerFreezer's criterion at several settings against no freezing, on fine-tuning with seed 0."""
    fast = args.sweep == "fast"
    grid, contender = (FAST_SWEEP, "LayerFreezer+cache") if fast else (SWEEP, "LayerFreezer")
    lines = [f"Contender: {contender}.", ""]
    lines += ["| threshold | patience | warmup | max_fraction | time (s) | speed-up | test accuracy | frozen (step) |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    pl.seed_everything(0, verbose=False)
    base = run(build(), "none", data, args.epochs, args.batch_size, 0, args.accelerator)
    lines.append(f"| none | | | | {base['seconds']:.1f} | 1.00x | {100 * base['accuracy']:.2f} | - |")
    for settings in grid:
        pl.seed_everything(0, verbose=False)
        r = run(build(), contender, data, args.epochs, args.batch_size, 0, args.accelerator, **settings)
        frozen = ", ".join(f"{b} ({s})" for b, s in r["frozen"].items()) or "-"
        lines.append(
            f"| {settings['threshold']} | {settings['patience']} | {settings['warmup']} | {settings['max_fraction']} "
            f"| {r['seconds']:.1f} | {base['seconds'] / r['seconds']:.2f}x | {100 * r['accuracy']:.2f} | {frozen} |"
        )
    return "\n".join(lines) + "\n"


def _report(results: dict, args: argparse.Namespace, command: str, seconds: float) -> str:
    lines = [
        "# Layer freezing: time and accuracy",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"accelerator {args.accelerator}; torch {torch.__version__}; {args.seeds} seeds; total {seconds / 60:.1f} min.",
    ]
    for setting, runs in results.items():
        base = statistics.mean(r["seconds"] for r in runs["none"])
        lines += ["", f"## {setting}", ""]
        lines += ["| contender | time (s) | speed-up | test accuracy | cache hit rate | cached | frozen (step) |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for name, seeds in runs.items():
            times, accs = [r["seconds"] for r in seeds], [100 * r["accuracy"] for r in seeds]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            frozen = "; ".join(", ".join(f"{b} ({s})" for b, s in r["frozen"].items()) or "-" for r in seeds)
            rates = [r["hit_rate"] for r in seeds if r["hit_rate"] is not None]
            rate = f"{100 * statistics.mean(rates):.0f}%" if rates else "-"
            held = max(r["cached_bytes"] for r in seeds)
            lines.append(
                f"| {name} | {statistics.mean(times):.1f} | {base / statistics.mean(times):.2f}x | "
                f"{statistics.mean(accs):.2f} ± {spread:.2f} | {rate} | {held / 2**20:.1f} MiB | {frozen} |"
            )
        lines += ["", "Test accuracy (%) at each epoch's end, mean over seeds:", ""]
        for name, seeds in runs.items():
            epochs = np.array([[accuracy for _, accuracy in r["points"]] for r in seeds]).mean(0)
            lines.append(f"- {name}: " + ", ".join(f"{100 * value:.2f}" for value in epochs))
    return "\n".join(lines) + "\n"


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (setting, runs) in zip(axes[0], results.items(), strict=True):
        for name, seeds in runs.items():
            points = np.array([r["points"] for r in seeds])  # seeds x epochs x (seconds, accuracy)
            ax.plot(points[:, :, 0].mean(0), 100 * points[:, :, 1].mean(0), marker="o", label=name)
        ax.set(title=setting, xlabel="training time (s, mean over seeds)", ylabel="test accuracy (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
