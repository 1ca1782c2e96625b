"""The RWC tab of TensorBoard: a dynamic plugin that serves the dashboard's page and the runs' RWC values.

Routes (under ``data/plugins/rwc/``):

- ``index.js``: the page (an ES module TensorBoard loads in the tab);
- ``runs``: the runs TensorBoard lists that hold RWC values, with a fingerprint each (it changes with new values);
- ``run?run=NAME&columns=N``: one run, in the binary form of :func:`~lightning_rwc.dashboard.data.encode`;
- ``cluster?run=NAME`` (POST, with the header ``X-RWC-Request: 1`` that only the page sends): cluster the run now,
  as ``lightning-rwc cluster`` does; one at a time, and never with ``tensorboard --rwc_read_only``.

Run names are taken only from the runs TensorBoard lists; no path from a request reaches the file system.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from typing_extensions import override
from werkzeug import Request, Response, wrappers

from lightning_rwc.dashboard import data
from lightning_rwc.keys import CLUSTER_RUN_DIR, DEFAULT_PREFIX, freeze_prefix

PLUGIN_NAME = "rwc"
STATIC = Path(__file__).parent / "static"
MAX_COLUMNS = 4000
"""The most columns a page may ask for: wider than any screen."""
MAX_SAMPLES = 100_000
"""The most measurements per layer read through TensorBoard's data provider (it samples longer runs)."""
OWN_READING_BYTES = 64 << 20
"""Event files up to this size are read by the dashboard itself (model order); larger ones through TensorBoard."""


class RWCPlugin(base_plugin.TBPlugin):
    """Serves the RWC dashboard (see the module description).

    Args:
        context: TensorBoard's context (its data provider, its log directory and its flags).
        prefix: the prefix the runs were logged under.
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext, prefix: str = DEFAULT_PREFIX) -> None:
        self._provider = context.data_provider
        self._logdir = Path(context.logdir).resolve() if context.logdir else None
        self._read_only = bool(getattr(context.flags, "rwc_read_only", False))
        self._prefix = prefix
        self._cache: dict[str, tuple[tuple, data.RunData]] = {}
        self._answers: dict[tuple[str, int], tuple[tuple, bytes]] = {}
        self._cache_lock = threading.Lock()
        self._cluster_lock = threading.Lock()

    @override
    def get_plugin_apps(self) -> dict[str, Any]:
        return {
            "/index.js": self._static,
            "/runs": self._runs_route,
            "/run": self._run_route,
            "/cluster": self._cluster_route,
        }

    @override
    def is_active(self) -> bool:
        return True  # the page itself says when no run holds RWC values

    @override
    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="RWC", disable_reload=False)

    @override
    def data_plugin_names(self) -> tuple[str, ...]:
        return ("scalars",)

    @wrappers.Request.application
    def _static(self, request: Request) -> Response:
        return http_util.Respond(request, (STATIC / "index.js").read_bytes(), "text/javascript")

    @wrappers.Request.application
    def _runs_route(self, request: Request) -> Response:
        runs = [{"run": run, "version": _digest(self._version(request, run))} for run in self._rwc_runs(request)]
        return http_util.Respond(request, {"runs": runs, "cluster_now": not self._read_only}, "application/json")

    @wrappers.Request.application
    def _run_route(self, request: Request) -> Response:
        run = self._known_run(request)
        if run is None:
            return _error(request, "No such run among those TensorBoard lists.", 404)
        try:
            columns = min(max(int(request.args.get("columns", "1000")), 1), MAX_COLUMNS)
        except ValueError:
            return _error(request, "columns must be a whole number.", 400)
        return http_util.Respond(request, self._encoded(request, run, columns), "application/octet-stream")

    @wrappers.Request.application
    def _cluster_route(self, request: Request) -> Response:
        if request.method != "POST" or request.headers.get("X-RWC-Request") != "1":
            return _error(request, "Clustering writes files: send a POST from the RWC page.", 405)
        if self._read_only:
            return _error(request, "This TensorBoard runs with --rwc_read_only: clustering is switched off.", 403)
        run = self._known_run(request)
        directory = self._directory(run) if run is not None else None
        if directory is None:
            return _error(request, "No such run among those TensorBoard lists, in its log directory.", 404)
        if not self._cluster_lock.acquire(blocking=False):
            return _error(request, "Another clustering is running; try again when it has finished.", 409)
        try:
            from lightning_rwc.pipeline import cluster_run

            output = cluster_run(directory, prefix=self._prefix, plots=False)
        except (OSError, ValueError) as err:
            return _error(request, str(err), 422)
        finally:
            self._cluster_lock.release()
        answer = {"run": run, "clusters": output.result.n_clusters, "layers": len(output.result.labels)}
        return http_util.Respond(request, answer, "application/json")

    def _rwc_runs(self, request: Request) -> list[str]:
        """The runs TensorBoard lists that hold RWC values (event files with ``{prefix}/`` tags, or a values file)."""
        ctx, eid = _context(request)
        listed = [run.run_name for run in self._provider.list_runs(ctx, experiment_id=eid)]
        scalars = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name="scalars")
        head = f"{self._prefix}/"
        has_tags = {run for run, tags in scalars.items() if any(tag.startswith(head) for tag in tags)}
        return sorted(
            run
            for run in listed
            if not run.endswith(CLUSTER_RUN_DIR) and (run in has_tags or data.has_values_file(self._directory(run)))
        )

    def _known_run(self, request: Request) -> str | None:
        """The ``run`` argument, if it is one of the runs TensorBoard lists (compared as text, never as a path)."""
        wanted = request.args.get("run", "")
        return wanted if len(wanted) < 4096 and wanted in self._rwc_runs(request) else None

    def _directory(self, run: str) -> Path | None:
        """The directory of a listed run inside the log directory, or ``None`` (no log directory, or outside it)."""
        if self._logdir is None:
            return None
        directory = (self._logdir / run).resolve() if run != "." else self._logdir
        inside = directory == self._logdir or self._logdir in directory.parents
        return directory if inside and directory.is_dir() else None

    def _version(self, request: Request, run: str) -> tuple:
        """What changes when the run gains values or clusters: for event files, each tag's last step and time."""
        ctx, eid = _context(request)
        directory = self._directory(run)
        if directory is not None and data.event_files_bytes(directory) <= OWN_READING_BYTES:
            return data.fingerprint(directory, self._prefix)
        tags = self._provider.list_scalars(
            ctx, experiment_id=eid, plugin_name="scalars", run_tag_filter=provider.RunTagFilter(runs=[run])
        ).get(run, {})
        latest = max(((series.max_step, series.max_wall_time) for series in tags.values()), default=())
        return (len(tags), latest, data.fingerprint(directory, self._prefix))

    def _encoded(self, request: Request, run: str, columns: int) -> bytes:
        """The run's answer for ``columns`` columns, encoded again only when the run changed."""
        version = self._version(request, run)
        with self._cache_lock:
            cached = self._answers.get((run, columns))
            if cached is not None and cached[0] == version:
                return cached[1]
        encoded = data.encode(self._read(request, run, version), columns)
        with self._cache_lock:
            self._answers = {key: value for key, value in self._answers.items() if key[0] != run or value[0] == version}
            self._answers[run, columns] = (version, encoded)
        return encoded

    def _read(self, request: Request, run: str, version: tuple) -> data.RunData:
        """The run's data, read again only when its version changed."""
        with self._cache_lock:
            cached = self._cache.get(run)
            if cached is not None and cached[0] == version:
                return cached[1]
        directory = self._directory(run)
        if data.has_values_file(directory):
            found = data.from_values_file(directory, self._prefix)
            found.decisions = data.freeze_decisions(self._scalars(request, run, freeze_prefix(self._prefix)))
        elif directory is not None and data.event_files_bytes(directory) <= OWN_READING_BYTES:
            found = data.from_event_files(directory, self._prefix)
        else:
            found = data.from_scalars(self._scalars(request, run), self._prefix)
        found.clusters = data.read_clusters(directory)
        with self._cache_lock:
            self._cache[run] = (version, found)
        return found

    def _scalars(self, request: Request, run: str, head: str = "") -> dict[str, list[tuple[int, float]]]:
        """The run's scalars whose tags start with ``head``, through TensorBoard's data provider (sampled)."""
        ctx, eid = _context(request)
        listed = self._provider.list_scalars(
            ctx, experiment_id=eid, plugin_name="scalars", run_tag_filter=provider.RunTagFilter(runs=[run])
        ).get(run, {})
        tags = [tag for tag in listed if tag.startswith(head)]
        read = self._provider.read_scalars(
            ctx,
            experiment_id=eid,
            plugin_name="scalars",
            downsample=MAX_SAMPLES,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags),
        ).get(run, {})
        return {tag: [(d.step, d.value) for d in read[tag]] for tag in tags if tag in read}


class RWCLoader(base_plugin.TBLoader):
    """Adds ``--rwc_read_only`` to ``tensorboard`` (no clustering from the page) and makes the plugin."""

    @override
    def define_flags(self, parser: Any) -> None:
        parser.add_argument(
            "--rwc_read_only",
            action="store_true",
            help="RWC dashboard: switch off its one writing action, clustering a run from the page.",
        )

    @override
    def load(self, context: base_plugin.TBContext) -> RWCPlugin:
        return RWCPlugin(context)


def _context(request: Request) -> tuple[Any, str]:
    from tensorboard import plugin_util

    return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)


def _digest(version: tuple) -> str:
    """A short fingerprint of a run's version (what changes when it gains values), for the page to compare."""
    return hashlib.sha1(repr(version).encode()).hexdigest()[:16]


def _error(request: Request, message: str, code: int) -> Response:
    return http_util.Respond(request, json.dumps({"error": message}), "application/json", code=code)
