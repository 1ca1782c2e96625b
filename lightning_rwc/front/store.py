"""The frozen front's outputs, one per input sample, within a byte budget: in memory, then in memory-mapped files.

A sample is known by a fingerprint of its bytes (BLAKE2b of every batch-first tensor the forward receives, plus the
other tensors' bytes), so two inputs are the same when they are bitwise equal: a sample that random augmentation
changes every epoch is a new sample every time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

SLAB_BYTES = 64 << 20
"""The size of each memory-mapped file the store spills to."""


def fingerprints(args: Iterable[Any], batch: int) -> list[bytes]:
    """A key per sample of a batch of ``batch`` from the tensors in ``args`` (those with the batch first: per sample).

    Example::

        >>> x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
        >>> keys = fingerprints([x], 3)
        >>> keys[0] == keys[1], keys[0] == keys[2]
        (True, False)
    """
    shared, rows = hashlib.blake2b(digest_size=16), []
    for arg in args:
        if not isinstance(arg, Tensor):
            continue
        data = arg.detach().cpu().contiguous()
        shared.update(f"{arg.dtype}{tuple(arg.shape[1:]) if arg.dim() else ()}".encode())
        if arg.dim() and arg.shape[0] == batch:
            rows.append(data.reshape(batch, -1).view(torch.uint8).numpy())
        else:
            shared.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    keys = []
    for i in range(batch):
        digest = shared.copy()
        for row in rows:
            digest.update(row[i].tobytes())
        keys.append(digest.digest())
    return keys


class ActivationStore:
    """Front outputs by sample key: up to ``max_bytes`` in memory, then (with ``folder``) in memory-mapped files.

    Args:
        max_bytes: the most bytes the outputs may take in memory.
        folder: where to spill what does not fit, as memory-mapped files (removed when the store is cleared);
            ``None`` keeps only what fits.
        dtype: the dtype outputs are stored in (``None``: their own); ``torch.float16`` halves float32's bytes with
            a relative error of at most 2**-11 per element, ``torch.bfloat16`` at most 2**-8.

    Example::

        >>> store = ActivationStore(max_bytes=1024)
        >>> store.put([b"a", b"b"], torch.ones(2, 3))
        >>> hit, values = store.get([b"b", b"c"])
        >>> hit, values.tolist(), store.in_memory
        ([True, False], [[1.0, 1.0, 1.0]], 24)
    """

    def __init__(self, max_bytes: int, folder: str | os.PathLike | None = None, dtype: torch.dtype | None = None):
        self.max_bytes, self.folder, self.dtype = max_bytes, None if folder is None else Path(folder), dtype
        self.full = False
        """Whether an output was left out because the budget was spent (and there is no folder)."""
        self._values: dict[bytes, Tensor] = {}
        self._slabs: list[tuple[Path, np.memmap]] = []
        self._free = 0  # rows left in the last slab
        self.in_memory = 0
        """Bytes held in memory."""
        self.spilled = 0
        """Bytes held in memory-mapped files."""

    def __len__(self) -> int:
        return len(self._values)

    def get(self, keys: list[bytes]) -> tuple[list[bool], Tensor | None]:
        """Which keys are known, and their outputs stacked (in the stored dtype, on the CPU), or ``None``."""
        found = [self._values.get(key) for key in keys]
        hit = [value is not None for value in found]
        values = [value for value in found if value is not None]
        return hit, torch.stack(values) if values else None

    def put(self, keys: list[bytes], outputs: Tensor) -> None:
        """Keep each sample's output (the batch first) under its key, while the budget (or the folder) allows."""
        outputs = outputs.detach().to("cpu", self.dtype or outputs.dtype)
        for key, output in zip(keys, outputs, strict=True):
            if key in self._values:
                continue
            size = output.numel() * output.element_size()
            if self.in_memory + size <= self.max_bytes:
                self._values[key] = output.clone()
                self.in_memory += size
            elif self.folder is not None:
                self._values[key] = self._spill(output)
                self.spilled += size
            else:
                self.full = True

    def clear(self) -> None:
        """Forget every output and remove the memory-mapped files."""
        self._values.clear()
        for path, _ in self._slabs:
            path.unlink(missing_ok=True)
        self._slabs, self._free, self.in_memory, self.spilled, self.full = [], 0, 0, 0, False

    def _spill(self, output: Tensor) -> Tensor:
        """``output`` copied into the next free row of a memory-mapped file (a new file when the last one is full)."""
        array = output.numpy() if output.dtype != torch.bfloat16 else output.view(torch.int16).numpy()
        if not self._free or self._slabs[-1][1].shape[1:] != array.shape or self._slabs[-1][1].dtype != array.dtype:
            rows = max(1, SLAB_BYTES // max(1, array.nbytes))
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="front-", suffix=".bin", dir=self.folder)
            os.close(handle)
            slab = np.memmap(name, dtype=array.dtype, mode="w+", shape=(rows, *array.shape))
            self._slabs.append((Path(name), slab))
            self._free = rows
        slab = self._slabs[-1][1]
        row = slab.shape[0] - self._free
        slab[row] = array
        self._free -= 1
        stored = torch.from_numpy(slab[row])
        return stored.view(torch.bfloat16) if output.dtype == torch.bfloat16 else stored
