#!/usr/bin/env bash
# The GPU checks and benchmarks, as one script for a machine with CUDA and PyTorch, Lightning, torchvision,
# TensorBoard, scikit-learn, transformers and peft installed (hdbscan is not needed). Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-.}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$out/gpu.txt"
python3 -c "import torch; from lightning_rwc.measure.backends import fused; import triton; print('triton', triton.__version__, 'fused kernel:', fused.problem(torch.device('cuda'), torch.float32, 'l1') or 'usable')" | tee -a "$out/gpu.txt"
python3 -m pytest -q -m gpu -p no:doctest -o addopts="" -o pythonpath=tests tests/measure tests/test_callback.py 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
python3 -m benchmarks.run --device cuda --skip clustering --profile --out "$out/gpu_bench.md" 2>&1 | grep -v "^USDT\|^ERROR:.*gpuGetDeviceCount" | tail -120
python3 -m benchmarks.adapters --device cuda --out "$out/gpu_adapters.md" 2>&1 | tail -20
python3 -m benchmarks.optimizer_source --device cuda --size gpt2-124m --out "$out/gpu_optimizer_source_124m.md" 2>&1 | tail -12
python3 -m benchmarks.optimizer_source --device cuda --size gpt2-1.5b --dtype bfloat16 --out "$out/gpu_optimizer_source_1.5b.md" 2>&1 | tail -12
