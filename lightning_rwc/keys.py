"""Names shared by the writer and the readers of RWC logs."""

ALL_KEY = "_all"
"""Key of the value for all tracked weights taken as one vector."""

DEFAULT_PREFIX = "rwc"
"""Default prefix of the per-layer tags: ``rwc/<parameter name>``."""

CLUSTER_PREFIX = "rwc_cluster"
"""Prefix of the cluster summary tags: ``rwc_cluster/<id>/{mean,lower,upper}``."""

CLUSTER_RUN_DIR = "rwc_clusters"
"""Name of the cluster run written beside a source run."""

CLUSTER_JSON = "rwc_clusters.json"
"""Name of the cluster JSON file written beside a source run."""
