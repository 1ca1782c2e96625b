"""Layer Freezer.

Freezes the blocks of a network that have stopped learning, front to back, from the relative weight change that
:class:`~lightning_rwc.RelativeWeightChange` measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_rwc.callback import RelativeWeightChange
from lightning_rwc.decide.freeze import FreezeOrder, FreezeRule
from lightning_rwc.freezing import MODES, BlockFreezer, FreezeMode
from lightning_rwc.front import FrontCache
from lightning_rwc.keys import freeze_prefix
from lightning_rwc.measure import select_parameters
from lightning_rwc.measure.select import compile_patterns
from lightning_rwc.parts import Part, Record
from lightning_rwc.validate import check_choice, check_switch


class LayerFreezer(Callback, Part):
    r"""Freeze the blocks of the network that have stopped learning, front to back, to save backward time.

    The blocks are those of the TensorBoard layout (:mod:`lightning_rwc.blocks`: ResNet's stages, each of a
    transformer's layers, ...), found from the names of the measured layers. The decisions come from the
    measurements of the :class:`~lightning_rwc.RelativeWeightChange` in the same Trainer (the first one, if several;
    with none, one with default settings is added), to which it attaches itself as a part: after ``warmup``
    measurements, a block whose RWC has stayed at or below ``threshold`` times its own peak for ``patience``
    measurements in a row is frozen together with every block before it (``order="front"``: backward then stops at
    the frozen front), up to ``max_fraction`` of the blocks. The last block (the head, and whatever shares
    parameters with it) is never frozen with ``keep_last``.

    Frozen parameters get ``requires_grad=False`` and lose their gradients, so optimizers leave them as they are;
    their modules run in eval mode (``eval_frozen``: batch-norm statistics frozen, dropout off); their RWC curves
    end. With ``cache``, once a prefix of the blocks is frozen its output is computed once per input sample and
    reused: the forward pass of the frozen front is skipped for inputs seen before
    (:class:`~lightning_rwc.front.FrontCache`; inputs are the same when bitwise equal). ``mode="suggest"`` changes
    nothing: it logs what would be frozen, and when.

    Logged metrics (through every logger, at the step of the measurement that decided):

    - ``{log_prefix}_freeze/frozen_blocks``: how many blocks are frozen (or, suggesting, would be);
    - ``{log_prefix}_freeze/{block}``: 1 at the step the block froze;
    - with ``cache``, ``{log_prefix}_freeze/cache_hit_rate`` (the share of samples since the last measurement whose
      front output was reused) and ``{log_prefix}_freeze/cache_bytes``;
    - with TensorBoard, a text ``{log_prefix}_freeze/decisions`` listing every decision so far.

    Under DDP rank zero's measurements reach every rank, so every rank freezes the same blocks at the same step;
    DDP must then be told that parameters may stop taking part: ``strategy="ddp_find_unused_parameters_true"``.

    Args:
        mode: ``"freeze"`` or ``"suggest"``.
        threshold: fraction of a block's peak RWC below which it counts as settled.
        patience: measurements in a row a block must stay settled.
        warmup: measurements before any block may be frozen.
        max_fraction: the largest share of the blocks (the kept ones left out) that may be frozen.
        order: ``"front"`` (a block only with every block before it) or ``"any"`` (saves only the weight gradients
            and optimizer updates of the frozen blocks, not backward through them).
        blocks: custom blocks: regular expressions or module paths, matched at the start of parameter names.
        keep_last: never freeze the last block.
        eval_frozen: run the modules of frozen blocks in eval mode (batch-norm statistics frozen, dropout off).
        cache: ``True`` (a :class:`~lightning_rwc.front.FrontCache` with its defaults: 1 GiB in memory), a
            ``FrontCache`` of your settings, or ``False``. Needs ``mode="freeze"`` and ``eval_frozen``.

    Raises:
        ValueError: for a setting out of range, or ``cache`` without ``mode="freeze"`` and ``eval_frozen``.
        MisconfigurationException: at the start of training, with ``mode="freeze"`` under DDP without
            ``find_unused_parameters``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_rwc import LayerFreezer, RelativeWeightChange
        >>> callbacks = [RelativeWeightChange(every_n_epochs=None, every_n_steps=50), LayerFreezer()]
        >>> trainer = Trainer(callbacks=callbacks)
    """

    def __init__(
        self,
        mode: FreezeMode = "freeze",
        threshold: float = 0.5,
        patience: int = 2,
        warmup: int = 2,
        max_fraction: float = 0.75,
        order: FreezeOrder = "front",
        blocks: Sequence[str] = (),
        keep_last: bool = True,
        eval_frozen: bool = True,
        cache: bool | FrontCache = False,
    ) -> None:
        check_choice("mode", mode, MODES)
        self.rule = FreezeRule(threshold, patience, warmup, max_fraction, order)
        compile_patterns(blocks, "blocks")
        check_switch("keep_last", keep_last)
        check_switch("eval_frozen", eval_frozen)
        if not isinstance(cache, (bool, FrontCache)):
            raise ValueError(f"cache must be True, False or a FrontCache, got {cache!r}")
        if cache is not False and (mode != "freeze" or not eval_frozen):
            raise ValueError("cache needs mode='freeze' and eval_frozen=True: only a frozen front in eval mode stays")
        self.mode, self.blocks, self.keep_last, self.eval_frozen = mode, list(blocks), keep_last, eval_frozen
        self.cache = FrontCache() if cache is True else cache or None
        """The frozen front's outputs (``None`` without ``cache``)."""
        self._counted = (0, 0)  # the cache's hits and misses at the last measurement
        self._epoch_counts: tuple[int, int, str | None] | None = None  # and at the start of the epoch, with its cut
        self._cut_before: str | None = None  # the cut at the start of the epoch before
        self.freezer: BlockFreezer | None = None
        self._rwc: RelativeWeightChange | None = None
        self._pending: dict[str, Any] | None = None

    every_rank = True  # every rank freezes the same blocks at the same step

    @property
    def frozen(self) -> dict[str, int]:
        """Each frozen (or, suggesting, would-be-frozen) block and the global step of the decision."""
        return {} if self.freezer is None else self.freezer.frozen

    @property
    @override
    def state_key(self) -> str:
        rule = {name: getattr(self.rule, name) for name in ("threshold", "patience", "warmup", "max_fraction", "order")}
        return f"{type(self).__qualname__}{{'mode': {self.mode!r}, 'blocks': {self.blocks!r}, **{rule!r}}}"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._rwc is not None:
            return
        found = [callback for callback in trainer.callbacks if isinstance(callback, RelativeWeightChange)]
        if found:
            self._rwc = found[0]
        else:  # measure with default settings; placed before the checkpoint callbacks, which Lightning runs last
            self._rwc = RelativeWeightChange()
            last = [i for i, callback in enumerate(trainer.callbacks) if isinstance(callback, Checkpoint)]
            trainer.callbacks.insert(last[0] if last else len(trainer.callbacks), self._rwc)
        self._rwc.attach(self)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode == "freeze":
            model = trainer.strategy.model
            if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
                raise MisconfigurationException(
                    "LayerFreezer(mode='freeze') under DDP needs DDP to accept parameters that stop taking part: "
                    "use Trainer(strategy='ddp_find_unused_parameters_true') or "
                    "DDPStrategy(find_unused_parameters=True)."
                )
        if self._pending and self._pending.get("frozen"):  # blocks frozen before the checkpoint: frozen again now
            self._build(pl_module, self._pending.get("names") or self._selected(pl_module))
            self.freezer.load_state_dict(self._pending)
            self._pending = None

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.freezer is not None:
            self.freezer.keep_eval()  # Lightning puts the model back in train mode at the start of each epoch

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.cache is not None:  # an epoch that begins with the cut of the epoch before: every sample seen once
            whole = self.cache.path if self.cache.path == self._cut_before else None
            self._epoch_counts, self._cut_before = (self.cache.hits, self.cache.misses, whole), self.cache.path

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cache, start = self.cache, self._epoch_counts
        if cache is None or start is None or start[2] is None or start[2] != cache.path:
            return  # no cache, or one that has not yet seen a whole epoch with this cut: not yet a fair test
        hits, misses = cache.hits - start[0], cache.misses - start[1]
        if hits + misses and hits < 0.5 * (hits + misses):
            self._rwc.warn(
                "cache",
                f"LayerFreezer(cache=...): only {hits / (hits + misses):.0%} of the samples of epoch "
                f"{trainer.current_epoch} were found in the cache"
                + (", whose budget is spent" if cache.store.full else ": the inputs change from epoch to epoch")
                + ". Caching does not pay here: use cache=False (or a larger budget, or a folder to spill to).",
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.cache is not None:
            self.cache.detach()  # the model's own forward again, and the memory given back

    @override
    def on_measurement(self, trainer: pl.Trainer, record: Record) -> None:
        known = [] if self.freezer is None else self.freezer.names
        new = [name for name in record.measurement.sums()[0] if name not in set(known)]
        if self.freezer is None or new:  # the first measurement, or layers the blocks do not cover yet
            state = self.freezer.state_dict() if self.freezer is not None else self._pending or {}
            self._build(trainer.lightning_module, known + new)  # frozen layers, no longer measured, stay known
            self.freezer.load_state_dict(state)
            self._pending = None
        chosen = self.freezer.update(record.step, record.measurement)
        head = freeze_prefix(self._rwc.log_prefix)
        record.extra[f"{head}/frozen_blocks"] = float(len(self.freezer.frozen))
        if self.cache is not None and self.cache.path is not None:
            hits, misses = self.cache.hits - self._counted[0], self.cache.misses - self._counted[1]
            self._counted = (self.cache.hits, self.cache.misses)
            if hits + misses:
                record.extra[f"{head}/cache_hit_rate"] = hits / (hits + misses)
            record.extra[f"{head}/cache_bytes"] = float(self.cache.size)
        record.extra |= {f"{head}/{block}": 1.0 for block in chosen}
        if chosen:
            verb = "Froze" if self.mode == "freeze" else "Would freeze"
            rank_zero_info(f"LayerFreezer: {verb} {', '.join(chosen)} at step {record.step}.")
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                    logger.experiment.add_text(f"{head}/decisions", self._decisions(), global_step=record.step)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.freezer is None:
            return dict(self._pending or {})
        return {**self.freezer.state_dict(), "names": self.freezer.names}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def _build(self, pl_module: pl.LightningModule, names: list[str]) -> None:
        self.freezer = BlockFreezer(
            pl_module,
            names,
            mode=self.mode,
            rule=self.rule,
            patterns=self.blocks,
            keep_last=self.keep_last,
            eval_frozen=self.eval_frozen,
            norm=self._rwc.settings.norm,
            cache=self.cache,
        )

    def _selected(self, pl_module: pl.LightningModule) -> list[str]:
        """The parameters the callback's settings select: the blocks of a checkpoint that did not save its names."""
        settings = self._rwc.settings
        return [name for name, _ in select_parameters(pl_module, settings.params, *settings.patterns())]

    def _decisions(self) -> str:
        verb = "frozen" if self.mode == "freeze" else "would be frozen"
        return "\n".join(f"- `{block}` {verb} at step {step}" for block, step in self.frozen.items())
