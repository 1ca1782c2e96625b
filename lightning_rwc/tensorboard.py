"""TensorBoard output: scalars written in one event, custom-scalars layouts, the heatmap image, and the cluster run.

Layouts group tags into charts. ``Multiline`` charts take regular expressions that TensorBoard matches from the
start of a tag, so every layer name is escaped; ``Margin`` charts take three exact tags (value, lower, upper).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lightning_rwc.blocks import find_blocks
from lightning_rwc.keys import ALL_KEY, CLUSTER_RUN_DIR, DEFAULT_PREFIX, cluster_prefix

if TYPE_CHECKING:
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter

    from lightning_rwc.clustering import ClusterResult


def tag_pattern(tag: str) -> str:
    r"""A regular expression that matches exactly ``tag`` (TensorBoard matches from the start of the tag).

    Example::

        >>> tag_pattern("rwc/layer1.0.conv1.weight")
        'rwc/layer1\\.0\\.conv1\\.weight$'
    """
    return re.escape(tag) + "$"


Layout = dict[str, dict[str, list]]
"""A custom-scalars layout as ``SummaryWriter.add_custom_scalars`` takes it:
``{category: {chart title: ["Multiline", [tag regexes]] or ["Margin", [value, lower, upper]]}}``."""


def layer_layout(names: Sequence[str], prefix: str = DEFAULT_PREFIX) -> Layout:
    r"""The custom-scalars layout of the callback: one chart per block (:mod:`lightning_rwc.blocks`), and ``_all``.

    Example::

        >>> layout = layer_layout(["conv1.weight", "layer1.0.conv1.weight", "fc.weight"])
        >>> charts = layout["relative weight change (rwc)"]
        >>> list(charts)
        ['all layers (_all)', 'conv1', 'layer1', 'fc', 'live cluster means']
        >>> charts["layer1"]
        ['Multiline', ['rwc/layer1\\.0\\.conv1\\.weight$']]
    """
    charts: dict[str, list] = {f"all layers ({ALL_KEY})": ["Multiline", [tag_pattern(f"{prefix}/{ALL_KEY}")]]}
    for block, members in find_blocks(names).members(names).items():
        charts[block] = ["Multiline", [tag_pattern(f"{prefix}/{name}") for name in members]]
    charts["live cluster means"] = ["Multiline", [re.escape(f"{cluster_prefix(prefix)}/") + r"\d+/mean$"]]
    return {f"relative weight change ({prefix})": charts}


def cluster_layout(cluster_ids: Iterable[int], prefix: str = DEFAULT_PREFIX) -> Layout:
    """One ``Margin`` chart per cluster (mean with its quartile band) and one chart of all cluster means.

    The tags are those of a run logged under ``prefix`` (see :func:`~lightning_rwc.keys.cluster_prefix`).

    Example::

        >>> cluster_layout([1, 0])["RWC clusters"]["cluster 1"]
        ['Margin', ['rwc_cluster/1/mean', 'rwc_cluster/1/lower', 'rwc_cluster/1/upper']]
    """
    ids, head = sorted(cluster_ids), cluster_prefix(prefix)
    charts: dict[str, list] = {"all cluster means": ["Multiline", [tag_pattern(f"{head}/{cid}/mean") for cid in ids]]}
    for cid in ids:
        charts[f"cluster {cid}"] = ["Margin", [f"{head}/{cid}/{key}" for key in ("mean", "lower", "upper")]]
    return {"RWC clusters": charts}


def heatmap_image(values: np.ndarray, cell: int = 4, max_pixels: tuple[int, int] = (512, 1024)) -> np.ndarray:
    """A layers x measurements grey image of ``log10(RWC)`` (brighter: more change), ``(1, H, W)`` uint8.

    Each value becomes a ``cell`` x ``cell`` block; the smallest value is 1, the largest 255, and missing or
    non-positive values are 0. The image is at most ``max_pixels`` (height, width) however long the run: a table
    with more rows or columns than fit is first reduced to bins of adjacent layers or measurements (the mean of
    their logarithms).

    Example::

        >>> heatmap_image(np.array([[0.1, 0.01], [np.nan, 0.001]]), cell=1).tolist()
        [[[255, 128], [0, 1]]]
        >>> heatmap_image(np.ones((3, 5000)) / 10).shape
        (1, 12, 1024)
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(values > 0, np.log10(values), np.nan)
    logs = bin_means(bin_means(logs, max_pixels[0] // cell, axis=0), max_pixels[1] // cell, axis=1)
    finite = logs[np.isfinite(logs)]
    image = np.zeros(logs.shape, dtype=np.uint8)
    if finite.size:
        low, high = finite.min(), finite.max()
        scaled = (logs - low) / (high - low) if high > low else np.ones_like(logs)
        image = np.where(np.isfinite(logs), np.round(1 + 254 * scaled), 0).astype(np.uint8)
    return np.kron(image, np.ones((cell, cell), dtype=np.uint8))[None]


def bin_means(table: np.ndarray, bins: int, axis: int) -> np.ndarray:
    """``table`` with at most ``bins`` entries along ``axis``: the nan-mean of adjacent groups where it has more.

    Group ``i`` starts at ``int(linspace(0, n, bins + 1)[i])``; non-finite entries are left out of the means.
    """
    if table.shape[axis] <= bins:
        return table
    starts = np.linspace(0, table.shape[axis], bins + 1).astype(int)[:-1]
    finite = np.isfinite(table)
    sums = np.add.reduceat(np.where(finite, table, 0.0), starts, axis=axis)
    counts = np.add.reduceat(finite, starts, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)  # a bin with no finite value stays missing


def write_cluster_run(
    result: ClusterResult, run_dir: str | os.PathLike, name: str = CLUSTER_RUN_DIR, prefix: str = DEFAULT_PREFIX
) -> Path:
    """Write the cluster summaries of ``result`` as a TensorBoard run ``run_dir/name``, replacing an older one.

    The run holds ``<prefix>_cluster/<id>/{mean,lower,upper}`` at the source steps (``prefix``: the one the source
    run was logged under), the custom-scalars layout of :func:`cluster_layout` and a text listing each cluster's
    members. It is written into a temporary directory first, so an existing cluster run is only replaced by a
    complete one.

    Returns:
        The directory of the cluster run.
    """
    from torch.utils.tensorboard import SummaryWriter

    target = Path(run_dir) / name
    recover_dir(target)
    for left in target.parent.glob(f".{name}.*.tmp"):  # left by a run that was killed
        _remove(left)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))  # new: never through a link
    head = cluster_prefix(prefix)
    try:
        writer = SummaryWriter(log_dir=str(tmp))
        try:
            writer.add_custom_scalars(cluster_layout((s.cluster_id for s in result.summaries), prefix))
            for summary in result.summaries:
                for key, curve in (("mean", summary.mean), ("lower", summary.lower), ("upper", summary.upper)):
                    for step, value in zip(result.steps, curve, strict=True):
                        writer.add_scalar(f"{head}/{summary.cluster_id}/{key}", value, global_step=step)
            writer.add_text(head, result.markdown(), global_step=result.steps[-1] if result.steps else 0)
        finally:
            writer.close()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no partial run left behind
        raise
    replace_dir(tmp, target)
    return target


def replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing ``target`` is removed only once ``source`` is in place.

    Example::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "new").mkdir(); (root / "old").mkdir()
        >>> replace_dir(root / "new", root / "old")
        >>> sorted(p.name for p in root.iterdir())
        ['old']
    """
    old = target.with_name(f".{target.name}.old")
    recover_dir(target)
    _remove(old)
    if target.exists() or target.is_symlink():
        target.rename(old)
    source.rename(target)
    _remove(old)


def _remove(path: Path) -> None:
    """Remove a folder and what it holds; a symbolic link is removed itself, never what it points to."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """Put back the ``target`` that :func:`replace_dir` had moved aside when the process was killed.

    Example::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / ".out.old").mkdir()
        >>> recover_dir(root / "out")
        >>> sorted(p.name for p in root.iterdir())
        ['out']
    """
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not old.is_symlink() and not target.exists():
        old.rename(target)


def use_fast_checksums() -> bool:
    """Make TensorBoard's event writer checksum each record with ``google-crc32c`` (in C) instead of pure Python.

    TensorBoard's record writer computes the CRC-32C of every event in Python, on its writer thread, holding the
    interpreter for longer than the rest of logging a measurement. The checksums are the same, bit for bit, so the
    files do not change; only TensorBoard's module-level function is replaced, once per process.

    Returns:
        Whether the C implementation is in use (``False`` where ``google-crc32c`` or its C extension is missing).
    """
    try:
        import google_crc32c
    except ImportError:
        return False
    from tensorboard.summary.writer import record_writer

    if google_crc32c.implementation != "c":
        return False
    record_writer.masked_crc32c = masked_crc32c
    return True


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of an event file record (TFRecord framing), computed in C.

    Example::

        >>> from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as in_python
        >>> masked_crc32c(b"event") == in_python(b"event")
        True
    """
    import google_crc32c

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def write_scalars(writer: SummaryWriter, values: Mapping[str, float], step: int, head: str = "") -> bool:
    """Write ``values`` as scalars at ``step`` in **one** event (one ``Summary`` holding every value).

    ``SummaryWriter.add_scalar`` makes one event per value; readers (TensorBoard,
    :func:`~lightning_rwc.runs.load_history`) see the same tags, steps and values either way. Each tag is ``head``
    followed by the key (see :func:`log_and_find_head`). The summary is encoded by :func:`summary_bytes`. Nothing is
    written if the writer was closed (its ``file_writer`` is gone).

    Returns:
        Whether the values were written.

    Example::

        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> writer = SummaryWriter(tempfile.mkdtemp())
        >>> write_scalars(writer, {"rwc/fc.weight": 0.5, "rwc/_all": 0.25}, step=3)
        True
        >>> writer.close()
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    if writer.file_writer is None:
        return False
    encoded = summary_bytes(_SummaryLayout.of(head, tuple(values)), values.values())
    writer.file_writer.add_summary(Summary.FromString(encoded), global_step=step)
    return True


def summary_bytes(layout: _SummaryLayout, values: Iterable[float]) -> bytes:
    """A ``Summary`` of one scalar (``simple_value``) per tag of ``layout``, in protobuf's wire format.

    The bytes around the values are the same every time the tags are: they are laid out once (see
    :class:`_SummaryLayout`) and each call only places the values, as float32 like ``simple_value``, with NumPy.

    Example::

        >>> from tensorboard.compat.proto.summary_pb2 import Summary
        >>> encoded = summary_bytes(_SummaryLayout.of("", ("rwc/a", "rwc/b")), [0.5, 0.25])
        >>> [(value.tag, value.simple_value) for value in Summary.FromString(encoded).value]
        [('rwc/a', 0.5), ('rwc/b', 0.25)]
    """
    floats = np.fromiter(values, dtype=np.float64, count=layout.slots.size // 4)
    with np.errstate(over="ignore"):  # beyond float32: inf, as protobuf stores it
        floats = floats.astype("<f4")
    encoded = layout.template.copy()
    encoded[layout.slots] = floats.view(np.uint8)
    return encoded.tobytes()


class _SummaryLayout:
    """The wire format of a ``Summary`` of scalars with given tags, without the values: bytes and value slots.

    Each value is field 1 of the summary (length-delimited), holding the tag (field 1, a string) and the value
    (field 2, a 32-bit float). The layouts of the latest tag lists are kept, so that a run that logs the same
    layers again and again lays them out once.
    """

    def __init__(self, tags: Sequence[str]) -> None:
        pieces, slots, position = [], [], 0
        for tag in tags:
            name = tag.encode()
            inner = b"\x0a" + _varint(len(name)) + name + b"\x15"
            head = b"\x0a" + _varint(len(inner) + 4) + inner
            pieces += [head, bytes(4)]
            slots.append(position + len(head))
            position += len(head) + 4
        self.template = np.frombuffer(b"".join(pieces), dtype=np.uint8).copy()
        self.slots = (np.array(slots, dtype=np.intp)[:, None] + np.arange(4)).ravel()

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def of(head: str, keys: tuple[str, ...]) -> _SummaryLayout:
        """The layout of the tags ``head + key`` for ``keys``."""
        return _SummaryLayout([head + key for key in keys])


def _varint(number: int) -> bytes:
    """``number`` as a protobuf varint (7 bits a byte, lowest first)."""
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def log_and_find_head(logger: TensorBoardLogger, values: Mapping[str, float], step: int) -> str | None:
    """Log ``values`` through ``logger.log_metrics`` and return the text its tags put before each key.

    A logger may rename keys: ``TensorBoardLogger(prefix="train")`` writes ``rwc/fc.weight`` as
    ``train-rwc/fc.weight``. The tags one real call hands to its writer show the naming without reading the
    logger's settings, so that :func:`write_scalars` can then write the same tags. ``None`` when the tags are not
    the keys behind one common head (values must then go through ``log_metrics``).

    Example::

        >>> import tempfile
        >>> from lightning.pytorch.loggers import TensorBoardLogger
        >>> logger = TensorBoardLogger(tempfile.mkdtemp(), prefix="train")
        >>> log_and_find_head(logger, {"rwc/fc.weight": 0.5, "rwc/_all": 0.25}, step=3)
        'train-'
    """
    writer, tags = logger.experiment, []
    add_scalar = writer.add_scalar

    def record(tag: str, *args: object, **kwargs: object) -> None:
        tags.append(tag)
        add_scalar(tag, *args, **kwargs)

    writer.add_scalar = record  # on this instance only, for the one call below
    try:
        logger.log_metrics(dict(values), step=step)
    finally:
        del writer.add_scalar
    if len(tags) != len(values):
        return None
    heads = {tag[: len(tag) - len(key)] if tag.endswith(key) else None for tag, key in zip(tags, values, strict=True)}
    return heads.pop() if len(heads) == 1 else None
