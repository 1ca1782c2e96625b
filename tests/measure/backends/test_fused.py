"""The fused Triton kernel: values against the float64 reference, run on CPU tensors by Triton's interpreter.

The interpreter executes the kernel's Triton code with NumPy (in a child process, ``fused_interpreted.py``, with
blocks of 16 elements), so its arithmetic, masking, addressing across separate allocations and block sums are
checked here without a GPU. The compiled code and its speed are checked on CUDA (tests marked ``gpu`` in
``test_tracker.py`` and ``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import reference_rwc

from lightning_rwc.measure.backends import fused

pytest.importorskip("triton")

NORMS = ["l1", "l2", "elementwise"]
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}


def change(tensors: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Move each element by about 1%, in place: dtypes, layouts and shared storage stay as they are."""
    g = torch.Generator().manual_seed(seed)
    for t in tensors:
        t.copy_(t.double() * (1 + 0.01 * torch.randn(t.shape, generator=g, dtype=torch.float64)))
    return tensors


def blocks_case(dtype: torch.dtype) -> list[torch.Tensor]:
    """One element, exactly one block, a masked tail after full blocks, more blocks than one step of the block sums."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=g).to(dtype) for shape in [(1,), (4, 4), (7, 5), (30, 11)]]
    tensors[3][0, :5] = 0  # zeros are left out of the elementwise mean
    return tensors


def layouts_case() -> list[torch.Tensor]:
    """channels_last, transposed, and views at odd offsets of one allocation (not 16-byte aligned)."""
    g = torch.Generator().manual_seed(0)
    buffer = torch.randn(101, generator=g)
    return [
        torch.randn(6, 3, 5, 5, generator=g).to(memory_format=torch.channels_last),
        torch.randn(20, 9, generator=g).t(),
        buffer[1:34].view(3, 11),
        buffer[37:].view(8, 8),
    ]


CASES = {f"{norm}-{dtype}": (lambda d=DTYPES[dtype]: blocks_case(d), norm) for norm in NORMS for dtype in DTYPES}
CASES["layouts"] = (layouts_case, "l1")
CASES["empty"] = (lambda: [torch.ones(3), torch.empty(0), torch.ones(2)], "l1")  # a tensor without elements
CASES["nonfinite"] = (lambda: [torch.ones(3), torch.ones(20), torch.ones(2)], "l1")  # NaN and inf are set below


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict:
    """The kernel's sums and refreshed snapshots for every case, and the self-test's verdicts, from one child run."""
    folder = tmp_path_factory.mktemp("fused")
    cases = {name: (change(build(), 1), build(), norm) for name, (build, norm) in CASES.items()}
    nonfinite = cases["nonfinite"][0]
    nonfinite[0][1], nonfinite[1][17] = math.nan, math.inf  # the second one in a masked tail at BLOCK=16
    torch.save(cases, folder / "cases.pt")  # keeps strides, storage offsets and shared storage
    script = Path(__file__).with_name("fused_interpreted.py")
    subprocess.run([sys.executable, str(script), str(folder / "cases.pt"), str(folder / "results.pt")], check=True)
    results = torch.load(folder / "results.pt")
    return {"cases": cases, "results": results}


def test_a_tensor_without_elements_sums_to_zero_between_others(interpreted):
    current, _, _ = interpreted["cases"]["empty"]
    (numerators, denominators), _, _ = interpreted["results"]["empty"]
    changes = [(w.double() - 1).abs().sum().item() for w in current]
    assert numerators.tolist() == pytest.approx(changes, rel=1e-6) and changes[1] == 0 < min(changes[0], changes[2])
    assert denominators.tolist() == [3.0, 0.0, 2.0]


def test_nan_and_inf_weights_reach_the_sums_of_their_layer_only(interpreted):
    current, _, _ = interpreted["cases"]["nonfinite"]
    (numerators, denominators), _, _ = interpreted["results"]["nonfinite"]
    assert math.isnan(numerators[0]) and math.isinf(numerators[1]) and math.isfinite(numerators[2])
    assert denominators.tolist() == [3.0, 20.0, 2.0]  # the snapshots were finite


@pytest.mark.parametrize("case", sorted(set(CASES) - {"empty", "nonfinite"}))
def test_matches_float64_reference_and_refreshes_the_snapshot(interpreted, case):
    current, previous, norm = interpreted["cases"][case]
    sums, snapshots, align = interpreted["results"][case]
    got = {str(i): a / b for i, (a, b) in enumerate(zip(*sums.tolist(), strict=True))}
    if norm == "l2":
        got = {name: math.sqrt(value) for name, value in got.items()}
    expected = reference_rwc(
        {str(i): p for i, p in enumerate(previous)}, {str(i): w for i, w in enumerate(current)}, norm
    )
    del expected["_all"]
    tolerance = 1e-12 if current[0].dtype == torch.float64 else 1e-6
    assert got == pytest.approx(expected, rel=tolerance)
    assert all(torch.equal(p, w) and p.stride() == w.stride() for p, w in zip(snapshots, current, strict=True))
    assert align == (1 if case == "layouts" else 16 // current[0].element_size())  # 128-bit accesses where aligned


@pytest.mark.parametrize("norm", NORMS)
def test_self_test_passes_where_the_kernel_runs(interpreted, norm):
    assert interpreted["results"][f"self-test {norm}"] == (None, True)


@pytest.mark.parametrize(
    ("error", "definite"), [(RuntimeError("no C compiler found"), False), (ImportError("no triton"), True)]
)
def test_self_test_reports_why_the_kernel_cannot_run_and_whether_that_is_definite(monkeypatch, error, definite):
    def broken():
        raise error

    monkeypatch.setattr(fused, "_kernels", broken)
    reason = f"{type(error).__name__}: {error}"
    assert fused.self_test(torch.device("cpu"), torch.float32, "l1") == (reason, definite)


def test_a_failed_self_test_is_tried_again_and_only_a_definite_answer_is_kept(monkeypatch):
    answers = iter([("OutOfMemoryError: CUDA out of memory", False), (None, True)])
    calls = []
    monkeypatch.setattr(fused, "self_test", lambda *args: calls.append(args) or next(answers))
    monkeypatch.setattr(fused, "_VERDICTS", {})
    cuda = torch.device("cuda", 0)
    assert fused.problem(cuda, torch.float32, "l1") == "OutOfMemoryError: CUDA out of memory"
    assert fused.problem(cuda, torch.float32, "l1") is None  # tried again, and this time it ran
    assert fused.problem(cuda, torch.float32, "l1") is None  # kept: no third self-test
    assert len(calls) == 2


def test_only_cuda_devices_floating_types_and_known_norms_are_offered_to_the_kernel():
    assert fused.problem(torch.device("cpu"), torch.float32, "l1") == "the fused kernel runs on CUDA devices only"
    assert "got torch.int64" in fused.problem(torch.device("cuda"), torch.int64, "l1")
    assert fused.problem(torch.device("cuda"), torch.float32, "l3") == "the fused kernel has no code for norm 'l3'"


POINTER_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64"}


@pytest.mark.parametrize("dtype", list(POINTER_TYPES), ids=str)
def test_kernels_compile_for_ampere_and_hopper_and_load_full_blocks_in_128_bit_accesses(dtype):
    """Triton's own compiler (with the ``ptxas`` it ships), without a GPU: the compiled path, not the interpreter."""
    from triton import compile as compile_kernel
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    measure_blocks, add_blocks = fused._kernels()
    weights, sums = POINTER_TYPES[dtype], "*fp64" if dtype == torch.float64 else "*fp32"
    signature = dict.fromkeys(["w_base", "p_base"], weights) | dict.fromkeys(
        ["w_offsets", "p_offsets", "numels"], "*i64"
    )
    signature |= {"owners": "*i32", "starts": "*i64", "partials": sums, "blocks": "i32"}
    signature |= dict.fromkeys(["NORM", "ALIGN", "BLOCK"], "constexpr")
    aligned = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}  # as Triton marks 16-byte pointers
    for arch in (80, 90):
        target = GPUTarget("cuda", arch, 32)
        for norm, code in fused.NORM_CODES.items():
            constants = {"NORM": code, "ALIGN": 16 // dtype.itemsize, "BLOCK": fused.BLOCK}
            ptx = compile_kernel(ASTSource(measure_blocks, signature, constants, aligned), target=target).asm["ptx"]
            assert "ld.global.v4" in ptx or "ld.global.v2.b64" in ptx, (arch, norm)
        source = ASTSource(
            add_blocks,
            {"partials": sums, "firsts": "*i64", "totals": "*fp64", "blocks": "i32", "CHUNK": "constexpr"},
            {"CHUNK": fused.CHUNK},
        )
        assert "cubin" in compile_kernel(source, target=target).asm


def test_triton_is_imported_at_the_first_launch_not_by_the_tracker():
    code = (
        "import sys, torch; from lightning_rwc import WeightChangeTracker; "
        "tracker = WeightChangeTracker(torch.nn.Linear(2, 2)); tracker.step(); print('triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
