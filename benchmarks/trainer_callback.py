"""The Hugging Face Trainer callback's cost per step, measuring every step, against no callback and the bare tracker.

A GPT-2 built from a config (nothing downloaded) trained by ``transformers.Trainer`` on random tokens, one run per
contender and round, the contenders in another order each round:

- ``none``: the Trainer alone;
- ``bare tracker``: a ``WeightChangeTracker`` stepped in a minimal ``TrainerCallback`` after every optimizer step
  (the measurement, kept nowhere);
- ``callback``: ``RelativeWeightChangeCallback(every_n_steps=1)`` with its default parts (history, health flags,
  TensorBoard, values file).

Reported: the median wall time of a step (after the first ``--warmup`` steps of each run), and each contender's
time over ``none``'s. Run ``python -m benchmarks.trainer_callback --out benchmarks/results/trainer-callback-cpu.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import date

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from benchmarks.tables import cpu_name, publish, table
from lightning_rwc import WeightChangeTracker
from lightning_rwc.integrations.transformers import RelativeWeightChangeCallback


class StepClock(TrainerCallback):
    """The wall time of every optimizer step, end to end (callbacks after this one included in the next step)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.ends.append(time.perf_counter())


class BareTracker(TrainerCallback):
    """A ``WeightChangeTracker`` stepped after every optimizer step, its values dropped."""

    def __init__(self) -> None:
        self.tracker: WeightChangeTracker | None = None

    def on_step_begin(self, args, state, control, model=None, **kwargs) -> None:
        if self.tracker is None:
            self.tracker = WeightChangeTracker(model)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.tracker.step()


def run(contender: str, config: GPT2Config, args: argparse.Namespace, folder: str) -> list[float]:
    """Milliseconds of each step after the warm-up, for one contender."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    tokens = torch.randint(0, config.vocab_size, (args.batch * (args.steps + 1), config.n_positions))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    clock = StepClock()
    measuring = RelativeWeightChangeCallback(every_n_epochs=None, every_n_steps=1)
    extra = {"none": [], "bare tracker": [BareTracker()], "callback": [measuring]}
    training = TrainingArguments(
        output_dir=folder,
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        report_to=["tensorboard"] if contender == "callback" else [],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=[clock, *extra[contender]])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    ends = clock.ends[args.warmup :]
    return [1e3 * (b - a) for a, b in zip(ends, ends[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps (for the test suite)")
    parser.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.width, args.steps, args.warmup, args.rounds = 2, 32, 8, 2, 1
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=4, vocab_size=1024, n_positions=64)
    parameters = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    times: dict[str, list[float]] = {"none": [], "bare tracker": [], "callback": []}
    order, rng = list(times), random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            rng.shuffle(order)
            for contender in order:
                times[contender] += run(contender, config, args, folder)
    base = statistics.median(times["none"])
    rows = []
    for contender, measured in times.items():
        ms = statistics.median(measured)
        rows.append({"contender": contender, "ms per step": ms, "over none": ms / base, "extra ms": ms - base})
    bare = rows[1]["extra ms"]
    rows[2]["extra ms / bare tracker's"] = rows[2]["extra ms"] / bare if bare > 0 else float("nan")
    sections = [
        f"# The Trainer callback, every step, {date.today().isoformat()}",
        f"CPU: {cpu_name()}; torch {torch.__version__}. GPT-2 of {args.layers} layers of width {args.width} "
        f"({parameters / 1e6:.1f} M parameters), batch {args.batch}, {args.steps} steps per run (the first "
        f"{args.warmup} not timed), {args.rounds} rounds in shuffled order. Command: "
        f"`python -m benchmarks.trainer_callback {' '.join(sys.argv[1:])}`.",
        table(rows),
    ]
    publish(sections, args.out)


if __name__ == "__main__":
    main()
