"""The parts of :class:`~lightning_rwc.RelativeWeightChange`: what is done with each measurement, one concern each.

=========================  ======================================================================================
part                       its job
=========================  ======================================================================================
:class:`History`           keeps the measurements in memory (bounded) for ``callback.history`` and checkpoints
:class:`HealthFlags`       flags dead and runaway layers: one warning each, counts in the logs
:class:`Loggers`           every measurement to every logger (TensorBoard in one event, with its layout), flushes
:class:`Histogram`         the histogram of the layers' values in TensorBoard
:class:`Heatmap`           the layers x measurements image in TensorBoard
:class:`LiveClustering`    the layers clustered during training, cluster summaries logged
:class:`ValuesFile`        every measurement in a compact binary file beside the logs
=========================  ======================================================================================

:class:`~lightning_rwc.LayerFreezer` is a part too: added to the Trainer's callbacks, it attaches itself. Write
your own by subclassing :class:`Part`.
"""

from lightning_rwc.parts.base import Part, Record, check_parts
from lightning_rwc.parts.clusters import LiveClustering
from lightning_rwc.parts.health import HealthFlags
from lightning_rwc.parts.history import History
from lightning_rwc.parts.images import Heatmap, Histogram
from lightning_rwc.parts.loggers import Loggers
from lightning_rwc.parts.state import load_parts_state_dict, part_key, parts_state_dict
from lightning_rwc.parts.values import ValuesFile

__all__ = [
    "HealthFlags",
    "Heatmap",
    "Histogram",
    "History",
    "LiveClustering",
    "Loggers",
    "Part",
    "Record",
    "ValuesFile",
    "check_parts",
    "default_parts",
    "load_parts_state_dict",
    "part_key",
    "parts_state_dict",
]


def default_parts() -> list[Part]:
    """The parts of ``RelativeWeightChange()``: a new list, to extend or to leave parts out of.

    Example::

        >>> [type(part).__name__ for part in default_parts()]
        ['History', 'HealthFlags', 'Loggers', 'Histogram']
    """
    return [History(), HealthFlags(), Loggers(), Histogram()]
