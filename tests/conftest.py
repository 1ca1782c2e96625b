"""Shared fixtures: tiny models, a float64 reference of RWC, and a tiny logged training run."""

from __future__ import annotations

import gzip
import math
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


def reference_rwc(previous: dict[str, torch.Tensor], current: dict[str, torch.Tensor], norm: str) -> dict[str, float]:
    """RWC written plainly in float64, one layer at a time, plus '_all' over all layers as one vector."""
    values, num_total, den_total = {}, 0.0, 0.0
    for name, p in previous.items():
        p, w = p.double().flatten(), current[name].double().flatten()
        if norm == "l1":
            num, den = (w - p).abs().sum().item(), p.abs().sum().item()
        elif norm == "l2":
            num, den = ((w - p) ** 2).sum().item(), (p**2).sum().item()
        else:
            mask = p != 0
            num, den = ((w - p).abs()[mask] / p.abs()[mask]).sum().item(), float(mask.sum())
        num_total, den_total = num_total + num, den_total + den
        values[name] = _finish(num, den, norm)
    values["_all"] = _finish(num_total, den_total, norm)
    return values


def _finish(num: float, den: float, norm: str) -> float:
    if den == 0:
        return math.nan
    return math.sqrt(num / den) if norm == "l2" else num / den


def weights(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """A float64 copy of the named parameters."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().double().clone() for name in names}


class TinyNet(nn.Module):
    """Conv -> BN -> Linear: two weight tensors, biases and BN affine parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def make_tiny_module(lr: float = 0.1):
    """A LightningModule around TinyNet trained with SGD on random 8x8 images."""
    import lightning.pytorch as pl

    class TinyModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    return TinyModule()


def tiny_loader(n: int = 64, batch_size: int = 8, seed: int = 0):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def fit_kwargs() -> dict:
    """Trainer options that keep tests quiet and deterministic on the CPU."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
    }


FAMILIES = ("fast decay", "slow decay", "rise and fall", "flat")


def planted_curves(per_family: int = 75, measurements: int = 30, outliers: int = 6, seed: int = 0):
    """RWC-like curves from four trend families with noise, plus a few outlier layers.

    Returns layer names, the family index of each layer (-1 for outliers) and the (layers, measurements) values.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(1, measurements + 1, dtype=float)
    shapes = [
        0.1 * np.exp(-t / 3) + 1e-4,  # fast decay
        0.01 * np.exp(-t / 30),  # slow decay
        0.05 * (t / 10) * np.exp(1 - t / 10),  # rising then falling
        np.full_like(t, 3e-4),  # flat
    ]
    names, family, rows = [], [], []
    for f, shape in enumerate(shapes):
        for i in range(per_family):
            scale = rng.lognormal(0.0, 0.15)
            rows.append(shape * scale * rng.lognormal(0.0, 0.1, size=t.size))
            names.append(f"family{f}.block{i}.weight")
            family.append(f)
    for i in range(outliers):
        rows.append(10 ** rng.uniform(-5, 0, size=t.size))
        names.append(f"outlier{i}.weight")
        family.append(-1)
    order = rng.permutation(len(names))
    return [names[i] for i in order], np.array(family)[order], np.array(rows)[order]


def write_tensorboard_run(run_dir, names, values, steps=None, prefix="rwc"):
    """Write values in the callback's format: scalars {prefix}/{name} and {prefix}/_all at the given steps."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    steps = list(range(10, 10 * (values.shape[1] + 1), 10)) if steps is None else steps
    writer = SummaryWriter(log_dir=str(run_dir))
    for j, step in enumerate(steps):
        for i, name in enumerate(names):
            if values[i, j] == values[i, j]:  # skip nan: the layer was not measured then
                writer.add_scalar(f"{prefix}/{name}", values[i, j], global_step=step)
        writer.add_scalar(f"{prefix}/_all", float(np.nanmean(values[:, j])), global_step=step)
    writer.close()
    return steps


class RealRun:
    """A real fit of an 8-layer MLP logged to TensorBoard, CSV and a values file, measured every 2 steps.

    The module logs its loss at every step, so Lightning writes ``epoch`` at steps between the measurements too.
    ``epochs`` maps each measured step to the epoch the callback saw.
    """

    def __init__(self, root) -> None:
        import lightning.pytorch as pl
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
        from torch.utils.data import DataLoader, TensorDataset

        from lightning_rwc import RelativeWeightChange
        from lightning_rwc.parts import Part, ValuesFile, default_parts

        class MLP(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(*(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(7)))
                self.head = nn.Linear(16, 3)

            def training_step(self, batch, batch_idx):
                loss = nn.functional.cross_entropy(self.head(self.net(batch[0])), batch[1])
                self.log("loss", loss)
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)

        class Epochs(Part):
            def __init__(self) -> None:
                self.by_step: dict[int, int] = {}

            def on_measurement(self, trainer, record):
                self.by_step[record.step] = record.epoch

        torch.manual_seed(0)
        data = TensorDataset(torch.randn(56, 16), torch.randint(0, 3, (56,)))
        epochs = Epochs()
        rwc = RelativeWeightChange(every_n_epochs=None, every_n_steps=2, parts=[*default_parts(), ValuesFile(), epochs])
        loggers = [TensorBoardLogger(root, name="tb", version=0), CSVLogger(root, name="csv", version=0)]
        trainer = pl.Trainer(max_epochs=3, callbacks=[rwc], logger=loggers, log_every_n_steps=1, **fit_kwargs())
        trainer.fit(MLP(), DataLoader(data, batch_size=8))
        self.tensorboard_dir = loggers[0].log_dir
        (self.event_file,) = [p for p in Path(self.tensorboard_dir).iterdir() if "tfevents" in p.name]
        self.csv_file = Path(loggers[1].log_dir) / "metrics.csv"
        self.values_dir = Path(self.tensorboard_dir) / "rwc_values"
        self.epochs = epochs.by_step
        self.layers = rwc.history.layers


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> RealRun:
    return RealRun(tmp_path_factory.mktemp("real_run"))


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Float64 weight that each LoRA layer's forward uses, by module name: the stored base weight when merged, else
    the base weight plus ``scaling * B @ A`` of each active adapter (transposed where the weight is stored as
    ``(in, out)``), materialised in full."""
    weights = {}
    for name, layer in model.named_modules():
        if not hasattr(layer, "lora_A"):
            continue
        weight = _full(layer.get_base_layer().weight).clone()
        if not layer.merged:
            for adapter in set(layer.active_adapters) & {*layer.lora_A, *layer.lora_embedding_A}:
                weight += layer.scaling[adapter] * adapter_delta(layer, adapter)
        weights[name] = weight
    return weights


def adapter_delta(layer: nn.Module, adapter: str) -> torch.Tensor:
    """``B @ A`` of one adapter in float64, laid out as the base weight is stored (without the scaling)."""
    if adapter in layer.lora_embedding_A:
        a, b = _full(layer.lora_embedding_A[adapter]), _full(layer.lora_embedding_B[adapter])
        return (b @ a).T
    a, b = _full(layer.lora_A[adapter].weight), _full(layer.lora_B[adapter].weight)
    if a.dim() > 2:
        shape = layer.get_base_layer().weight.shape
        return (b.flatten(1) @ a.flatten(1)).reshape(shape)
    return (b @ a).T if layer.fan_in_fan_out else b @ a


def make_lora_module(blocks: int = 4):
    """A LightningModule fine-tuning a randomly initialised tiny GPT-2 with LoRA (PEFT) on random tokens; AdamW whose
    learning rate falls 100x each epoch, so every layer's RWC falls far below its first value."""
    import lightning.pytorch as pl
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    class LoraModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            config = GPT2Config(n_layer=blocks, n_embd=32, n_head=4, vocab_size=64, n_positions=16)
            self.model = get_peft_model(GPT2LMHeadModel(config), LoraConfig(r=4, target_modules=["c_attn", "c_proj"]))

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0], labels=batch[0]).loss

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)
            return [optimizer], [torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.01)]

    return LoraModule()


def token_loader(n: int = 64, length: int = 16) -> torch.utils.data.DataLoader:
    """Random token sequences of the tiny GPT-2's vocabulary."""
    tokens = torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=8)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A float64 copy of all of ``t`` (a ``DTensor`` gathered from every rank)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().double()


def tiny_gpt2_classifier() -> nn.Module:
    """GPT-2 of four layers of width 32 with a classification head, built from a config (nothing downloaded)."""
    import transformers

    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=100, n_positions=16, pad_token_id=0)
    return transformers.GPT2ForSequenceClassification(config)


def tiny_bert_classifier() -> nn.Module:
    """BERT of four layers of width 32 with a classification head, built from a config."""
    import transformers

    config = transformers.BertConfig(
        num_hidden_layers=4,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=16,
    )
    return transformers.BertForSequenceClassification(config)


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` as a gzipped unsigned-byte IDX file, as Fashion-MNIST ships."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, train: int, test: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random 28 x 28 images and labels 0-9 in Fashion-MNIST's four files; the arrays, by file prefix."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", train), ("t10k", test)):
        arrays[split] = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", arrays[split][0])
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", arrays[split][1])
    return arrays


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
