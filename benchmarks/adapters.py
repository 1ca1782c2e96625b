"""What measuring LoRA adapters by their layers' effective weights costs, against the raw factors and ``B @ A``.

A model of GPT-2 medium's shape (24 blocks, width 1,024; a vocabulary of 1,024, since the embedding is not adapted)
with LoRA of rank 16 on every attention and MLP projection (``c_attn``, ``c_proj``, ``c_fc``: 96 layers, 302 M base
weights). Contenders, each timed per measurement (values on the host), rounds in shuffled order:

- ``effective``: ``WeightChangeTracker(model)``: each adapted layer's effective change from its factors, in
  bounded pieces of the base weight;
- ``raw factors``: ``WeightChangeTracker(model, adapters="factors")``: ``lora_A`` and ``lora_B`` as layers;
- ``materialised``: the same values from ``W0 + s B A`` formed in full, before and after, for every layer.

On a GPU the peak memory each contender adds over the model is reported too.

Run ``python -m benchmarks.adapters --out benchmarks/results/adapters-cpu.md`` (``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

import torch
from torch import nn

from benchmarks.tables import cpu_name, publish, table
from benchmarks.timing import interleaved, peak_extra
from lightning_rwc import WeightChangeTracker
from lightning_rwc.measure.functional import element_sums, ratios


def gpt2_medium_with_lora(blocks: int, width: int, device: torch.device) -> nn.Module:
    """GPT-2 of ``blocks`` x ``width`` (random weights) with LoRA r=16 on every projection, factors not zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=blocks, n_embd=width, n_head=16, vocab_size=1024, n_positions=64)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["c_attn", "c_proj", "c_fc"], init_lora_weights=False)
    return get_peft_model(GPT2LMHeadModel(config), lora).to(device)


class Materialised:
    """The effective weights' RWC with ``W0 + s B A`` formed in full for every layer, before and after."""

    def __init__(self, model: nn.Module, norm: str) -> None:
        self.layers = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
        self.norm = norm
        self.snapshots = [self._factors(layer) for layer in self.layers]

    @staticmethod
    def _factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()

    @staticmethod
    def _weight(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        delta = b @ a
        return layer.get_base_layer().weight + layer.scaling["default"] * (delta.T if layer.fan_in_fan_out else delta)

    def step(self) -> list[float]:
        with torch.no_grad():
            sums = []
            for i, layer in enumerate(self.layers):
                now = self._factors(layer)
                previous, current = self._weight(layer, *self.snapshots[i]), self._weight(layer, *now)
                sums.append(element_sums(previous, current, self.norm).double())
                self.snapshots[i] = now
            return ratios(torch.stack(sums, dim=1).cpu(), self.norm).tolist()


def bench(model: nn.Module, device: torch.device, repeats: int) -> list[dict]:
    rows = []
    factors = [p for p in model.parameters() if p.requires_grad]
    for norm in ("l1", "l2"):
        effective = WeightChangeTracker(model, norm=norm)
        raw = WeightChangeTracker(model, norm=norm, adapters="factors")
        materialised = Materialised(model, norm)
        contenders = {"effective": effective.step, "raw factors": raw.step, "materialised": materialised.step}
        with torch.no_grad():  # a change for the first measurement of each
            for p in factors:
                p.add_(0.01 * torch.randn_like(p))
        times = interleaved(contenders, device, repeats)
        row = {"norm": norm, "rows": len(effective.names)}
        row |= {f"{name} (ms)": value for name, value in times.items()}
        row["effective / materialised"] = times["effective"] / times["materialised"]
        if device.type == "cuda":
            row |= {f"{name}: peak extra (MiB)": peak_extra(fn, device) for name, fn in contenders.items()}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, one round (for the test suite)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    blocks, width = (2, 64) if args.smoke else (24, 1024)
    model = gpt2_medium_with_lora(blocks, width, device)
    base = sum(m.get_base_layer().weight.numel() for m in model.modules() if hasattr(m, "lora_A"))
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}"
    sections = [
        f"# LoRA adapters measured by their effective weights, {date.today().isoformat()}",
        f"{hardware}; torch {torch.__version__}, {torch.get_num_threads()} threads. GPT-2 of {blocks} blocks x "
        f"{width}, LoRA r=16 on c_attn, c_proj, c_fc ({base / 1e6:.0f} M adapted base weights), float32. "
        f"Median of {1 if args.smoke else args.repeats} rounds in shuffled order. Command: "
        f"`python -m benchmarks.adapters {' '.join(sys.argv[1:])}`.",
        table(bench(model, device, 1 if args.smoke else args.repeats)),
    ]
    publish(sections, args.out)


if __name__ == "__main__":
    main()
