"""Train the tiny GPT-2 with transformers.Trainer and RelativeWeightChangeCallback under DDP (torchrun, 2 CPU
processes, gloo).

Usage: python -m torch.distributed.run --nproc_per_node 2 trainer_script.py OUT_DIR

Rank zero writes OUT_DIR/history.json and OUT_DIR/weights.pt (float64 copies of the tracked weights at the start
and after every optimizer step); every rank writes OUT_DIR/rank_<rank>.json (how many measurements it holds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.test_transformers import Recorder, Tokens, tiny_gpt2  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from lightning_rwc.integrations.transformers import RelativeWeightChangeCallback  # noqa: E402


def main(out: Path) -> None:
    recorder = Recorder(lora=False)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        ddp_backend="gloo",
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=Tokens(), callbacks=[recorder])
    rwc = RelativeWeightChangeCallback(trainer=trainer, every_n_epochs=None, every_n_steps=2)
    trainer.add_callback(rwc)
    trainer.train()
    rank = trainer.args.process_index
    reported = sum("rwc/_all" in entry for entry in trainer.state.log_history)
    (out / f"rank_{rank}.json").write_text(json.dumps({"measurements": len(rwc.history), "reported": reported}))
    if trainer.is_world_process_zero():
        rwc.history.save(out / "history.json")
        torch.save(recorder.by_step, out / "weights.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
