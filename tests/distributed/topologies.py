"""Measure a model under every way PyTorch shards a layer, on four gloo processes: ``python topologies.py OUT_DIR``.

Each rank builds the same model, applies one topology, creates a tracker, then twice moves every weight by a known
amount (the same full tensor on every rank, distributed like the weight) and measures. Then the same with
``source="optimizer"``: each move is a step of AdamW on known gradients, read from the optimizer's sharded state.
Rank zero writes, per topology and source, the tracker's values, the float64 reference from the full weights before
and after each move, and how many all-reduces each measurement made, to ``OUT_DIR/<topology>-<source>.pt``.

Topologies: HSDP (``fully_shard`` on a 2 x 2 replicate x shard mesh), tensor parallel (``ColwiseParallel`` /
``RowwiseParallel`` on 4 ranks: ``Shard(0)``, ``Shard(1)`` and ``Replicate()`` placements), FSDP2 + tensor parallel
on a 2 x 2 mesh, uneven shards (dimensions not divisible by 4, and one with fewer rows than ranks, so that a rank
holds an empty shard), a model mixing replicated (plain) and sharded parameters, and LoRA adapters (PEFT, on a
``Linear`` and a ``Conv1D`` stored as ``(in, out)``) measured by their effective weights under FSDP2 and DDP, against
the full effective weights.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import effective_weights, reference_rwc  # noqa: E402

import lightning_rwc.measure.sharding as sharding  # noqa: E402
from lightning_rwc import WeightChangeTracker  # noqa: E402

WORLD = 4


class MLP(nn.Module):
    def __init__(self, width: int = 8, hidden: int = 12, out: int = 6) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, out)
        self.norm = nn.LayerNorm(out)


class Uneven(nn.Module):
    """Dimensions not divisible by four ranks; ``tiny`` has three rows, so one rank's shard is empty."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 3)
        self.tiny = nn.Parameter(torch.randn(3, 2))


def hsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    for module in (model.up, model.down):
        fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def tensor_parallel(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))
    return parallelize_module(model, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})


def fsdp_and_tensor_parallel(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    parallelize_module(model, mesh["tp"], {"up": ColwiseParallel(), "down": RowwiseParallel()})
    return fully_shard(model, mesh=mesh["dp"])


def uneven(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.a)
    return fully_shard(model)


def mixed(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.up)  # model.down and model.norm stay plain tensors, replicated on every rank
    return model


class LoraMLP(nn.Module):
    """An ``nn.Linear`` and GPT-2's ``Conv1D`` with a LoRA adapter of rank 2 each (random factors) on a frozen base."""

    def __new__(cls) -> nn.Module:
        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D

        base = nn.Module()
        base.up, base.down = nn.Linear(8, 12), Conv1D(6, 12)
        config = LoraConfig(r=2, target_modules=["up", "down"], init_lora_weights=False)
        return get_peft_model(base, config)


def lora_fsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.base_model.model.up)
    return fully_shard(model)


def lora_ddp(model: nn.Module) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model)


TOPOLOGIES = {
    "hsdp": (MLP, hsdp),
    "tensor-parallel": (MLP, tensor_parallel),
    "fsdp-and-tensor-parallel": (MLP, fsdp_and_tensor_parallel),
    "uneven": (Uneven, uneven),
    "mixed": (MLP, mixed),
    "lora-fsdp2": (LoraMLP, lora_fsdp),
    "lora-ddp": (LoraMLP, lora_ddp),
}


def full(param: torch.Tensor) -> torch.Tensor:
    return (param.full_tensor() if sharding.is_sharded(param) else param).detach().double().clone()


def move(model: nn.Module, seed: int) -> None:
    """Scale every weight by a factor drawn from ``seed`` (the same full factor on every rank)."""
    from torch.distributed.tensor import distribute_tensor

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.requires_grad:  # a frozen base weight stays as it is
                continue
            factor = 1 + 0.01 * torch.randn(param.shape, generator=generator)
            if sharding.is_sharded(param):
                factor = distribute_tensor(factor, param.device_mesh, param.placements)
            param.mul_(factor)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    """One step of ``optimizer`` on gradients drawn from ``seed`` (the same full gradient on every rank)."""
    from torch.distributed.tensor import distribute_tensor

    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad:
            grad = torch.randn(param.shape, generator=generator)
            is_sharded = sharding.is_sharded(param)
            param.grad = distribute_tensor(grad, param.device_mesh, param.placements) if is_sharded else grad
    optimizer.step()


def weights(model: nn.Module, lora: bool) -> dict[str, torch.Tensor]:
    """Every parameter in full; for LoRA models each adapted layer's effective weight, under its row's name."""
    if not lora:
        return {n: full(p) for n, p in model.named_parameters()}
    return {f"{n.split('base_model.model.')[-1]}.weight": w for n, w in effective_weights(model).items()}


def worker(rank: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    calls: list[int] = []
    original = sharding.all_reduce_sum
    sharding.all_reduce_sum = lambda table: calls.append(1) or original(table)
    try:
        for (name, (build, shard)), source in itertools.product(TOPOLOGIES.items(), ("snapshot", "optimizer")):
            torch.manual_seed(0)
            model = shard(build())
            trained = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trained, lr=0.01, weight_decay=0.1) if source == "optimizer" else None
            tracker = WeightChangeTracker(model, params="trainable", source=source, optimizer=optimizer)
            steps = []
            lora = name.startswith("lora")
            for seed in (1, 2):
                before = weights(model, lora)
                move(model, seed) if optimizer is None else optimizer_step(model, optimizer, seed)
                after = weights(model, lora)
                calls.clear()
                values = tracker.step()
                reference = reference_rwc(before, after, "l1")
                steps.append({"values": values, "reference": reference, "all_reduces": len(calls)})
            placements = {n: str(getattr(p, "placements", "plain")) for n, p in model.named_parameters()}
            local = {n: sharding.local(p).numel() for n, p in model.named_parameters()}
            numels: list[dict[str, int] | None] = [None] * WORLD
            dist.all_gather_object(numels, local)
            if rank == 0:
                result = {"steps": steps, "placements": placements, "numels": numels}
                torch.save(result, Path(out) / f"{name}-{source}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "29517"), nprocs=WORLD)
