"""RelativeWeightChangeCallback in Hugging Face's Trainer: the values a float64 reference gives at every measurement,
with gradient accumulation, LoRA and resume; the run read back, clustered and listed as a Lightning run is."""

from __future__ import annotations

import importlib
import json
import os
import sys

import pytest
import torch
from conftest import effective_weights, free_port, reference_rwc

pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from lightning_rwc.integrations.transformers import STATE_FILE, RelativeWeightChangeCallback  # noqa: E402
from lightning_rwc.runs import load_history  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    """Random sequences of the tiny GPT-2's vocabulary, their own labels."""

    def __init__(self, n: int = 64, length: int = 16) -> None:
        self.tokens = torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def tiny_gpt2(lora: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn", "c_proj"]))
    return model


class Recorder(TrainerCallback):
    """Float64 copies of what the callback measures, at the start and after every optimizer step."""

    def __init__(self, lora: bool) -> None:
        self.lora, self.by_step = lora, {}

    def copy(self, model) -> dict[str, torch.Tensor]:
        if self.lora:
            return effective_weights(model)
        return {n: p.detach().double().clone() for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.by_step.setdefault(state.global_step, self.copy(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.by_step[state.global_step] = self.copy(model)


def train(tmp_path, callback, lora=False, accumulation=1, resume=None, save_steps=None, bf16=False):
    recorder = Recorder(lora)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=2,
        bf16=bf16,
        learning_rate=1e-3,
        report_to=["tensorboard"],
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        logging_steps=4,
    )
    trainer = Trainer(model=tiny_gpt2(lora), args=args, train_dataset=Tokens(), callbacks=[recorder])
    trainer.add_callback(callback(trainer) if callable(callback) else callback)  # a callable is given the Trainer
    trainer.train(resume_from_checkpoint=resume)
    return trainer, recorder


def assert_equal_to_the_reference(callback, recorder, lora: bool):
    history, previous = callback.history, 0
    assert len(history) >= 2
    for j, step in enumerate(history.steps):
        expected = reference_rwc(recorder.by_step[previous], recorder.by_step[step], "l1")
        total = expected.pop("_all")
        rows = {
            (name.removeprefix("base_model.model.") + ".weight" if lora else name): v for name, v in expected.items()
        }
        assert sorted(rows) == sorted(history.layers)
        for i, layer in enumerate(history.layers):
            assert history.values[i, j] == pytest.approx(rows[layer], rel=1e-5), (layer, step)
        assert history.total[j] == pytest.approx(total, rel=1e-5)
        previous = step


@pytest.mark.parametrize(("accumulation", "bf16"), [(1, False), (4, False), (1, True)])
def test_every_value_equals_a_float64_reference_counting_optimizer_steps(tmp_path, accumulation, bf16):
    callback = RelativeWeightChangeCallback(every_n_epochs=None, every_n_steps=3)
    trainer, recorder = train(tmp_path, callback, accumulation=accumulation, bf16=bf16)  # bf16: autocast
    steps = trainer.state.global_step  # 64 samples / 4 per batch / accumulation, for 2 epochs
    assert steps == 32 // accumulation
    assert callback.history.steps == list(range(3, steps + 1, 3))
    assert_equal_to_the_reference(callback, recorder, lora=False)
    logged = [entry for entry in trainer.state.log_history if "rwc/_all" in entry]
    assert [entry["step"] for entry in logged] == callback.history.steps  # the Trainer's own log history has them
    assert all("rwc_health/dead_layers" in entry for entry in logged)


class Reports(TrainerCallback):
    """What a ``report_to`` integration is given: every ``on_log`` call's values and step."""

    def __init__(self) -> None:
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs, step=state.global_step))


def test_given_the_trainer_each_summary_reaches_every_report_to_integration(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reports = Reports()

    def callback(trainer):
        trainer.add_callback(reports)  # after the RWC callback, as W&B's or MLflow's would be before it
        return RelativeWeightChangeCallback(trainer=trainer, every_n_epochs=None, every_n_steps=3)

    trainer, _ = train(tmp_path, callback)
    rwc = next(c for c in trainer.callback_handler.callbacks if isinstance(c, RelativeWeightChangeCallback))
    history = rwc.history
    reported = [entry for entry in reports.logs if "rwc/_all" in entry]
    assert [entry["step"] for entry in reported] == history.steps
    assert [entry["rwc/_all"] for entry in reported] == pytest.approx(list(history.total), rel=1e-6)
    assert all("rwc_health/dead_layers" in entry for entry in reported)
    logged = [entry for entry in trainer.state.log_history if "rwc/_all" in entry]
    assert [entry["step"] for entry in logged] == history.steps  # once each in the Trainer's history
    (run,) = (tmp_path / "out" / "runs").iterdir()
    events = EventAccumulator(str(run)).Reload()  # TensorBoard's reader; its own callback names it train/...
    written = events.Scalars("train/rwc/_all")
    assert [e.step for e in written] == history.steps
    assert [e.value for e in written] == pytest.approx(list(history.total), rel=1e-6)
    assert load_history(run).steps == history.steps  # the run still reads back as the RWC run it is


def test_a_trainer_that_cannot_log_is_refused_with_what_to_pass():
    with pytest.raises(ValueError, match=r"trainer must be the transformers.Trainer .* got a str"):
        RelativeWeightChangeCallback(trainer="out")


def test_lora_layers_are_measured_by_their_effective_weight(tmp_path):
    callback = RelativeWeightChangeCallback(every_n_epochs=1, every_n_steps=None)
    _, recorder = train(tmp_path, callback, lora=True)
    assert callback.history.steps == [16, 32]
    assert any("c_attn" in layer for layer in callback.history.layers)
    assert_equal_to_the_reference(callback, recorder, lora=True)


def test_a_resumed_run_continues_the_curves_exactly(tmp_path):
    whole = RelativeWeightChangeCallback(every_n_epochs=None, every_n_steps=3)
    train(tmp_path / "whole", whole, save_steps=10)
    assert (tmp_path / "whole" / "out" / "checkpoint-10" / STATE_FILE).is_file()
    resumed = RelativeWeightChangeCallback(every_n_epochs=None, every_n_steps=3)
    train(tmp_path / "whole", resumed, resume=str(tmp_path / "whole" / "out" / "checkpoint-10"))
    after = [j for j, step in enumerate(whole.history.steps) if step > 10]  # 12 covers 9 to 12: across the save
    assert resumed.history.steps[-len(after) :] == [whole.history.steps[j] for j in after]
    torch.testing.assert_close(
        torch.from_numpy(resumed.history.values[:, -len(after) :]), torch.from_numpy(whole.history.values[:, after])
    )


def test_the_run_reads_back_clusters_and_shows_in_the_rwc_tab_as_a_lightning_run(tmp_path, capsys):
    from lightning_rwc.cli import main

    callback = RelativeWeightChangeCallback(every_n_epochs=None, every_n_steps=2)
    train(tmp_path, callback)
    (run,) = (tmp_path / "out" / "runs").iterdir()  # the Trainer's own TensorBoard run
    assert any(run.glob("events.out.tfevents.*")) and (run / "rwc_values").is_dir()
    read = load_history(run)
    assert read.layers == callback.history.layers and read.steps == callback.history.steps
    torch.testing.assert_close(torch.from_numpy(read.values), torch.from_numpy(callback.history.values))
    assert main(["cluster", str(run), "--no-plots"]) == 0
    assert (run / "rwc_clusters.json").is_file()
    from dashboard.test_plugin import get, make_plugin  # the route tests' TensorBoard provider and context

    plugin = make_plugin(tmp_path / "out" / "runs")
    assert [entry["run"] for entry in json.loads(get(plugin, "/runs").get_data())["runs"]] == [run.name]


def test_without_transformers_the_import_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "lightning_rwc.integrations.transformers", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'lightning-rwc\[transformers\]'"):
        importlib.import_module("lightning_rwc.integrations.transformers")


LAUNCHERS = {  # each with the option that takes the rendezvous port
    "torchrun": ["torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    "accelerate": ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_under_ddp_rank_zero_measures_and_reports_what_the_reference_gives(tmp_path, launcher):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "distributed" / "trainer_script.py"
    accelerate = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    options = accelerate if launcher == "accelerate" else []
    launch = [sys.executable, "-m", *LAUNCHERS[launcher], str(free_port()), *options]
    inherited = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}  # the launcher sets its own
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    done = subprocess.run([*launch, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    history, by_step = load_history(tmp_path / "history.json"), torch.load(tmp_path / "weights.pt")
    assert history.steps == list(range(2, 17, 2))  # 64 samples over 2 ranks, batches of 4: 8 steps an epoch
    previous = 0
    for j, step in enumerate(history.steps):
        expected = reference_rwc(by_step[previous], by_step[step], "l1")
        for i, layer in enumerate(history.layers):
            assert history.values[i, j] == pytest.approx(expected[layer], rel=1e-5), (layer, step)
        previous = step
    ranks = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["measurements"] for rank in ranks] == [len(history.steps), 0]  # rank one measures nothing
    assert [rank["reported"] for rank in ranks] == [len(history.steps), 0]  # and reports nothing
