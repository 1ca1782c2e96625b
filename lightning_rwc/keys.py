"""Names shared by the writer and the readers of RWC logs."""

from collections.abc import Iterable

ALL_KEY = "_all"
"""Key of the value for all tracked weights taken as one vector."""

DEFAULT_PREFIX = "rwc"
"""Default prefix of the per-layer tags: ``rwc/<parameter name>``."""

CLUSTER_RUN_DIR = "rwc_clusters"
"""Name of the cluster run written beside a source run."""

CLUSTER_JSON = "rwc_clusters.json"
"""Name of the cluster JSON file written beside a source run."""

VALUES_SUFFIX = "_values"
"""End of the name of a run's folder of values file segments: ``<prefix>_values`` (see :func:`values_folder`)."""


def cluster_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    """Prefix of the cluster tags of a run logged under ``prefix``: ``<prefix>_cluster/<id>/{mean,lower,upper}``.

    Example::

        >>> cluster_prefix(), cluster_prefix("weights")
        ('rwc_cluster', 'weights_cluster')
    """
    return f"{prefix}_cluster"


def health_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    """Prefix of the layer-health tags of a run logged under ``prefix``: ``<prefix>_health/dead_layers``, ...

    Example::

        >>> health_prefix()
        'rwc_health'
    """
    return f"{prefix}_health"


def freeze_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    """Prefix of the freezer's tags of a run logged under ``prefix``: ``<prefix>_freeze/frozen_blocks``, ...

    Example::

        >>> freeze_prefix()
        'rwc_freeze'
    """
    return f"{prefix}_freeze"


def values_folder(prefix: str = DEFAULT_PREFIX) -> str:
    """Name of the folder, in the log directory, of the values file of a run logged under ``prefix``.

    Example::

        >>> values_folder()
        'rwc_values'
    """
    return f"{prefix}{VALUES_SUFFIX}"


def monitored_keys(monitors: Iterable[object], prefix: str = DEFAULT_PREFIX) -> set[str]:
    """Which of ``monitors`` (what callbacks and schedulers monitor) are keys logged under ``prefix``.

    Example::

        >>> sorted(monitored_keys(["val_loss", "rwc/fc.weight", "rwc_health/dead_layers", None]))
        ['rwc/fc.weight', 'rwc_health/dead_layers']
    """
    heads = (f"{prefix}/", f"{cluster_prefix(prefix)}/", f"{health_prefix(prefix)}/", f"{freeze_prefix(prefix)}/")
    return {monitor for monitor in monitors if isinstance(monitor, str) and monitor.startswith(heads)}
