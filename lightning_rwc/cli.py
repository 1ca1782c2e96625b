"""The ``lightning-rwc`` command: argument parsing and messages only."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from lightning_rwc.clustering import METHODS
from lightning_rwc.keys import CLUSTER_RUN_DIR, DEFAULT_PREFIX


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-rwc`` (its help is quoted in the README).

    Example::

        >>> build_parser().parse_args(["cluster", "lightning_logs", "--method", "kmeans"]).method
        'kmeans'
    """
    parser = argparse.ArgumentParser(
        prog="lightning-rwc",
        description="Layer-wise relative weight change (RWC): cluster the logged curves, or run the demo.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{cluster,demo}")

    cluster = commands.add_parser(
        "cluster",
        help="cluster the layers of logged runs and write the summaries back to TensorBoard",
        description="Cluster the layers of each run by their RWC curves. Writes <run>/rwc_clusters/ (a TensorBoard "
        "run: open the Custom Scalars tab), <run>/rwc_clusters.json and PNG plots.",
    )
    cluster.add_argument("path", help="a run directory, a folder of runs (each run below it), a metrics CSV or JSON")
    cluster.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="default: auto (HDBSCAN where it finds structure, else k-means with k by silhouette)",
    )
    cluster.add_argument("--k", type=int, default=None, help="k for kmeans (default: chosen by silhouette)")
    cluster.add_argument("--features", choices=("magnitude", "shape"), default="magnitude", help="default: magnitude")
    cluster.add_argument("--reduction", choices=("pca", "none", "umap"), default="pca", help="default: pca")
    cluster.add_argument("--min-cluster-size", type=int, default=None, help="HDBSCAN's smallest cluster")
    cluster.add_argument("--seed", type=int, default=0, help="default: 0")
    cluster.add_argument("--prefix", default=DEFAULT_PREFIX, help="tag prefix of RWC values (default: %(default)s)")
    cluster.add_argument("--no-plots", action="store_true", help="do not write PNG plots")

    demo = commands.add_parser(
        "demo",
        help="train a small ResNet-18 with the callback, then cluster its layers",
        description="Train a torchvision ResNet-18 on scikit-learn's bundled digits (or Fashion-MNIST) with "
        "RelativeWeightChange, then cluster the layers of the run.",
    )
    from lightning_rwc.demo import add_arguments

    add_arguments(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-rwc``; return the exit status.

    Example::

        >>> main(["cluster", "no/such/run"])
        2
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from lightning_rwc.demo import run_demo

        try:
            run_demo(args)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    return _cluster(args)


def _cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_rwc.pipeline import cluster_run
    from lightning_rwc.runs import find_runs, is_run

    path = Path(args.path)
    try:
        runs = [path] if path.is_file() or is_run(path) else find_runs(path, exclude_dirs=[CLUSTER_RUN_DIR])
    except (FileNotFoundError, NotADirectoryError):
        print(f"error: {path} does not exist; pass a run directory such as lightning_logs/version_0", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no TensorBoard event files or metrics.csv below {path}", file=sys.stderr)
        return 2
    options = {
        "method": args.method,
        "n_clusters": args.k,
        "features": args.features,
        "reduction": args.reduction,
        "min_cluster_size": args.min_cluster_size,
        "seed": args.seed,
    }
    failures = 0
    for run in runs:
        with warnings.catch_warnings(record=True) as caught:  # each printed as one line, after the outcome
            try:
                out = cluster_run(run, prefix=args.prefix, plots=not args.no_plots, **options)
            except (ValueError, OSError, ModuleNotFoundError) as err:  # OSError: a file that cannot be read or written
                out, error = None, err
        notes = [str(warning.message) for warning in caught]
        if out is None:  # one line: the error, then what was noticed on the way (a damaged file explains it)
            failures += 1
            noticed = "".join(f" (warning: {note})" for note in notes)
            print(_one_line(f"error: {run}: {error}{noticed}"), file=sys.stderr)
            continue
        for note in notes:
            print(_one_line(f"warning: {note}"), file=sys.stderr)
        print(f"{run}: {out.result.markdown()}")
        print(f"  wrote {out.cluster_run} (TensorBoard run) and {out.json_path}")
        if out.plots:
            print("  plots: " + ", ".join(str(p) for p in out.plots))
        if out.plots_skipped:
            print(f"  plots skipped: {out.plots_skipped}")
    if len(runs) > 1:
        print(f"clustered {len(runs) - failures} of {len(runs)} runs; open them with: tensorboard --logdir {path}")
    return 1 if failures else 0


def _one_line(text: str) -> str:
    return text.replace("\n", " ")
