"""lightning-rwc: how each layer of a network learns, measured as relative weight change (RWC).

The public names are loaded on first use, so that ``import lightning_rwc`` (and the CLI) does not pay for importing
Lightning, PyTorch or scikit-learn until they are needed.

Glossary (one word for one thing throughout the package):

- *layer*: one tracked parameter tensor, named as in ``named_parameters()`` (``layer1.0.conv1.weight``).
- *block*: a group of layers that a chart shows and the freezer freezes (:mod:`lightning_rwc.blocks`).
- *measurement*: the RWC of every layer at one step, against the previous measurement.
- ``_all``: the RWC of all tracked weights taken as one vector (``RWCHistory.total`` holds its series).
- *history*: the layers x measurements table (:class:`RWCHistory`).
- *run*: a directory of logs (event files, ``metrics.csv``, a values file).
- *part*: one concern of the callback, handed every measurement (:mod:`lightning_rwc.parts`).
- ``state_dict`` / ``load_state_dict``: what a checkpoint keeps of an object, and continuing from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BlockFreezer",
    "ClusterResult",
    "FrontCache",
    "LayerFreezer",
    "MeasureSettings",
    "RWCHistory",
    "RelativeWeightChange",
    "WeightChangeTracker",
    "cluster_layers",
    "load_history",
    "relative_weight_change",
    "write_cluster_run",
]

_SOURCES = {
    "BlockFreezer": "lightning_rwc.freezing",
    "ClusterResult": "lightning_rwc.clustering",
    "FrontCache": "lightning_rwc.front",
    "LayerFreezer": "lightning_rwc.layer_freezer",
    "MeasureSettings": "lightning_rwc.measure",
    "RWCHistory": "lightning_rwc.history",
    "RelativeWeightChange": "lightning_rwc.callback",
    "WeightChangeTracker": "lightning_rwc.measure",
    "cluster_layers": "lightning_rwc.clustering",
    "load_history": "lightning_rwc.runs",
    "relative_weight_change": "lightning_rwc.measure",
    "write_cluster_run": "lightning_rwc.tensorboard",
}

if TYPE_CHECKING:
    from lightning_rwc.callback import RelativeWeightChange
    from lightning_rwc.clustering import ClusterResult, cluster_layers
    from lightning_rwc.freezing import BlockFreezer
    from lightning_rwc.front import FrontCache
    from lightning_rwc.history import RWCHistory
    from lightning_rwc.layer_freezer import LayerFreezer
    from lightning_rwc.measure import MeasureSettings, WeightChangeTracker, relative_weight_change
    from lightning_rwc.runs import load_history
    from lightning_rwc.tensorboard import write_cluster_run


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_rwc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
