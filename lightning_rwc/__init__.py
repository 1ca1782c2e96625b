"""lightning-rwc: how each layer of a network learns, measured as relative weight change (RWC).

The public names are loaded on first use, so that ``import lightning_rwc`` (and the CLI) does not pay for importing
Lightning, PyTorch or scikit-learn until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BlockFreezer",
    "ClusterResult",
    "LayerFreezer",
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
    "LayerFreezer": "lightning_rwc.layer_freezer",
    "RWCHistory": "lightning_rwc.history",
    "RelativeWeightChange": "lightning_rwc.callback",
    "WeightChangeTracker": "lightning_rwc.measure",
    "cluster_layers": "lightning_rwc.clustering",
    "load_history": "lightning_rwc.history",
    "relative_weight_change": "lightning_rwc.measure",
    "write_cluster_run": "lightning_rwc.tensorboard",
}

if TYPE_CHECKING:
    from lightning_rwc.callback import RelativeWeightChange
    from lightning_rwc.clustering import ClusterResult, cluster_layers
    from lightning_rwc.freezing import BlockFreezer
    from lightning_rwc.history import RWCHistory, load_history
    from lightning_rwc.layer_freezer import LayerFreezer
    from lightning_rwc.measure import WeightChangeTracker, relative_weight_change
    from lightning_rwc.tensorboard import write_cluster_run


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_rwc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
