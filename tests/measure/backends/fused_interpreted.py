"""Run the fused kernel under Triton's interpreter on cases saved by ``test_fused.py``: ``python fused_interpreted.py
CASES RESULTS``. A child process, because the interpreter has to be chosen before Triton is imported."""

from __future__ import annotations

import os
import sys

import torch

from lightning_rwc.measure.backends import fused


def main(cases_path: str, results_path: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # fused imports Triton at the first launch, after this
    fused.BLOCK = 16  # a few hundred elements span many blocks
    fused.CHUNK = 4  # tensors of more than 4 blocks are added in several steps
    results = {}
    for name, (current, previous, norm) in torch.load(cases_path).items():
        kernel = fused.FusedKernel(current, previous, norm)
        results[name] = (kernel.measure(), kernel.snapshots, kernel.align)
    for norm in fused.NORM_CODES:
        results[f"self-test {norm}"] = fused.self_test(torch.device("cpu"), torch.float32, norm)
    torch.save(results, results_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
