"""The RWC tab of TensorBoard: a dynamic plugin that serves the dashboard's page and the runs' RWC values.

Routes (under ``data/plugins/rwc/``):

- ``index.js``: the page (an ES module TensorBoard loads in the tab);
- ``runs``: the runs TensorBoard lists that hold RWC values, with a fingerprint each (it changes with new values);
- ``run?run=NAME&columns=N``: one run, in the binary form of :func:`~lightning_rwc.dashboard.data.encode`;
- ``cluster?run=NAME`` (POST, with the header ``X-RWC-Request: 1`` that only the page sends, from a page of this
  server: ``Host`` one of its names and ``Origin``, when sent, the same): cluster the run now, as
  ``lightning-rwc cluster`` does; one at a time, and never with ``tensorboard --rwc_read_only``.

Run names are taken only from the runs TensorBoard lists; no path from a request reaches the file system. The tab
reads only regular files inside a run's folder, through no link and of a bounded size; what it keeps between
requests (runs read, answers encoded) is bounded in bytes. Anything it cannot read becomes a warning in the answer
or a JSON error, never a server error.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from typing_extensions import override
from werkzeug import Request, Response, wrappers

from lightning_rwc.dashboard import data
from lightning_rwc.dashboard.cache import BoundedCache
from lightning_rwc.files import open_inside
from lightning_rwc.keys import CLUSTER_RUN_DIR, DEFAULT_PREFIX, freeze_prefix
from lightning_rwc.runs import EventFiles

PLUGIN_NAME = "rwc"
STATIC = Path(__file__).parent / "static"
MAX_COLUMNS = 4000
"""The most columns a page may ask for: wider than any screen."""
COLUMN_STEP = 100
"""Columns asked are rounded down to a multiple of this (the page scales the heatmap to its width)."""
MAX_SAMPLES = 100_000
"""The most values per tag read through TensorBoard's data provider (it samples longer runs)."""
CACHE_MB = 1024
"""What the tab keeps between requests by default (``--rwc_cache_mb``)."""
MAX_FILE_MB = 4096
"""The largest file the tab reads by default (``--rwc_max_file_mb``)."""
_log = logging.getLogger(__name__)


class RWCPlugin(base_plugin.TBPlugin):
    """Serves the RWC dashboard (see the module description).

    Args:
        context: TensorBoard's context (its data provider, its log directory and its flags).
        prefix: the prefix the runs were logged under.

    Attributes:
        cache: what is kept between requests (runs read, answers encoded), within ``--rwc_cache_mb``.
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext, prefix: str = DEFAULT_PREFIX) -> None:
        flags = context.flags
        self._provider = context.data_provider
        self._logdir = Path(context.logdir).resolve() if context.logdir else None
        self._read_only = bool(getattr(flags, "rwc_read_only", False))
        self._hosts = _server_names(flags)
        self._max_file_bytes = int(getattr(flags, "rwc_max_file_mb", MAX_FILE_MB)) << 20
        self._prefix = prefix
        self.cache = BoundedCache(int(getattr(flags, "rwc_cache_mb", CACHE_MB)) << 20)
        self._cluster_lock = threading.Lock()
        self._read_lock = threading.Lock()  # one reading at a time: a run's event reader is not shared mid-read

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
        runs = [{"run": run, "version": _digest(self._version(run))} for run in self._rwc_runs(request)]
        return http_util.Respond(request, {"runs": runs, "cluster_now": not self._read_only}, "application/json")

    @wrappers.Request.application
    def _run_route(self, request: Request) -> Response:
        run = self._known_run(request)
        if run is None:
            return _error(request, "No such run among those TensorBoard lists.", 404)
        try:
            asked = min(max(int(request.args.get("columns", "1000")), 1), MAX_COLUMNS)
        except ValueError:
            return _error(request, "columns must be a whole number.", 400)
        try:
            encoded = self._encoded(request, run, max(asked // COLUMN_STEP * COLUMN_STEP, min(asked, COLUMN_STEP)))
        except Exception as err:  # noqa: BLE001 - whatever a damaged run does, one line to the page, not a 500
            _log.exception("RWC tab: run %r could not be read", run)
            return _error(request, f"This run could not be read: {type(err).__name__}: {err}"[:500], 422)
        return http_util.Respond(request, encoded, "application/octet-stream")

    @wrappers.Request.application
    def _cluster_route(self, request: Request) -> Response:
        if request.method != "POST" or request.headers.get("X-RWC-Request") != "1":
            return _error(request, "Clustering writes files: send a POST from the RWC page.", 405)
        if self._read_only:
            return _error(request, "This TensorBoard runs with --rwc_read_only: clustering is switched off.", 403)
        refused = self._foreign(request)
        if refused:
            return _error(request, refused, 403)
        run = self._known_run(request)
        directory = self._directory(run) if run is not None else None
        if directory is None:
            return _error(request, "No such run among those TensorBoard lists, in its log directory.", 404)
        if not self._cluster_lock.acquire(blocking=False):
            return _error(request, "Another clustering is running; try again when it has finished.", 409)
        try:
            from lightning_rwc.pipeline import cluster_run

            found = self._read(request, run, self._version(run))
            if found.history is None:
                return _error(request, " ".join(found.warnings) or "This run holds no RWC values.", 422)
            output = cluster_run(directory, prefix=self._prefix, plots=False, history=found.history)
        except (OSError, ValueError) as err:
            return _error(request, str(err), 422)
        finally:
            self._cluster_lock.release()
        answer = {"run": run, "clusters": output.result.n_clusters, "layers": len(output.result.labels)}
        return http_util.Respond(request, answer, "application/json")

    def _foreign(self, request: Request) -> str | None:
        """Why a request does not come from a page of this server (``None``: it does), against DNS rebinding."""
        host = request.host
        name = urlsplit(f"//{host}").hostname or ""
        if "*" not in self._hosts and name not in self._hosts and not _is_address(name):
            return (
                f"Host {host!r} is not a name of this server: clustering refused. Behind a proxy, name it with "
                "tensorboard --rwc_allowed_hosts."
            )
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return f"Origin {origin!r} is not this server ({host!r}): clustering refused."
        return None

    def _rwc_runs(self, request: Request, only: str | None = None) -> list[str]:
        """The runs TensorBoard lists that hold RWC values (event files with ``{prefix}/`` tags, or a values file).

        ``only``: look at that run alone (listed or not), not at every run's tags.
        """
        ctx, eid = _context(request)
        listed = [run.run_name for run in self._provider.list_runs(ctx, experiment_id=eid)]
        if only is not None:
            listed = [run for run in listed if run == only]
            if not listed:
                return []
        which = provider.RunTagFilter(runs=listed) if only is not None else None
        scalars = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name="scalars", run_tag_filter=which)
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
        return wanted if len(wanted) < 4096 and self._rwc_runs(request, only=wanted) else None

    def _directory(self, run: str) -> Path | None:
        """The directory of a listed run inside the log directory, or ``None`` (no log directory, or outside it)."""
        if self._logdir is None:
            return None
        directory = (self._logdir / run).resolve() if run != "." else self._logdir
        inside = directory == self._logdir or self._logdir in directory.parents
        return directory if inside and directory.is_dir() else None

    def _version(self, run: str) -> tuple:
        """What changes when the run gains values or clusters: its files' sizes and modification times."""
        return data.fingerprint(self._directory(run), self._prefix)

    def _encoded(self, request: Request, run: str, asked: int) -> bytes:
        """The run's answer for ``asked`` columns, encoded again only when the run changed."""
        version = self._version(run)
        found = self._read(request, run, version)
        key = ("answer", run, data.columns_sent(found.history, asked))
        cached = self.cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        encoded = data.encode(found, asked)
        self.cache.put(key, version, encoded, len(encoded))
        return encoded

    def _read(self, request: Request, run: str, version: tuple) -> data.RunData:
        """The run's data, read again only when its version changed (event files: only what they gained)."""
        cached = self.cache.get(("run", run))
        if cached is not None and cached[0] == version:
            return cached[1][0]
        with self._read_lock:
            return self._read_again(request, run, version)

    def _read_again(self, request: Request, run: str, version: tuple) -> data.RunData:
        cached = self.cache.get(("run", run))  # another request may have read it meanwhile
        if cached is not None and cached[0] == version:
            return cached[1][0]
        directory = self._directory(run)
        opener = functools.partial(open_inside, directory, max_bytes=self._max_file_bytes)
        events = None
        if directory is None:
            found = data.from_scalars(self._scalars(request, run), self._prefix)
        elif data.has_values_file(directory, self._prefix):
            found = data.from_values_file(directory, self._prefix, opener)
            found.decisions = data.freeze_decisions(self._scalars(request, run, freeze_prefix(self._prefix)))
        else:
            events = cached[1][1] if cached is not None and cached[1][1] is not None else EventFiles(directory, opener)
            events.update()
            found = data.from_event_files(events, self._prefix)
        found.clusters, problem = data.read_clusters(directory, opener)
        found.warnings += [problem] if problem else []
        held = (found.history.values.nbytes if found.history is not None else 0) + (events.nbytes if events else 0)
        self.cache.drop(lambda key: key[0] == "answer" and key[1] == run)  # answers of the old version
        self.cache.put(("run", run), version, (found, events), held)
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
        parser.add_argument(
            "--rwc_allowed_hosts",
            default="",
            help="RWC dashboard: more names this server is reached by (comma-separated; '*' for any), for "
            "clustering from the page behind a proxy. Its own host names and IP addresses are always allowed.",
        )
        parser.add_argument(
            "--rwc_cache_mb",
            type=int,
            default=CACHE_MB,
            help="RWC dashboard: the most memory (MiB) kept between requests: runs read and answers encoded.",
        )
        parser.add_argument(
            "--rwc_max_file_mb",
            type=int,
            default=MAX_FILE_MB,
            help="RWC dashboard: the largest file (MiB) it reads; larger ones are skipped with a warning.",
        )

    @override
    def load(self, context: base_plugin.TBContext) -> RWCPlugin:
        return RWCPlugin(context)


def _context(request: Request) -> tuple[Any, str]:
    from tensorboard import plugin_util

    return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)


def _server_names(flags: Any) -> set[str]:
    """The host names a page of this server may use: its own, ``localhost``, ``--host`` and ``--rwc_allowed_hosts``."""
    names = {"localhost", socket.gethostname(), socket.getfqdn(), getattr(flags, "host", None) or "localhost"}
    names.update(name.strip() for name in str(getattr(flags, "rwc_allowed_hosts", "") or "").split(","))
    return {name.lower() for name in names if name}


def _is_address(name: str) -> bool:
    """Whether ``name`` is an IP address (no DNS name can be rebound to point elsewhere)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _digest(version: tuple) -> str:
    """A short fingerprint of a run's version (what changes when it gains values), for the page to compare."""
    return hashlib.sha1(repr(version).encode()).hexdigest()[:16]


def _error(request: Request, message: str, code: int) -> Response:
    return http_util.Respond(request, json.dumps({"error": message}), "application/json", code=code)
