"""Engine actors on Ray: the only module of dipfill that imports Ray.

Why an actor pool with bounded in-flight work rather than Ray Data ``map_batches``,
measured (``scripts/bench_ray_data.py``, same tasks, byte-identical results): Ray Data
builds its actors inside every execution (~2-3 s per scene), adds ~20 ms per task and
~0.75 GiB (stats / autoscaling / location-tracker actors, pyarrow in every worker), pickles
our task descriptors with a warning, and retries a batch that kills its actor forever;
fillnodata fitted 2.46 s vs 3.21 s, DIP level within noise. Inputs are *read by the
workers* (a task descriptor is a few hundred bytes) and outputs go straight into the
per-scene patch store, so nothing needs an object-store dataset; one task per actor at a
time keeps memory bounded by the batch, and an actor keeps its engine (on GPUs, its
kernels and strategy cache) warm across batches and scenes. The same actors blend the
scene's blocks afterwards (:mod:`dipfill.pipeline.blocks`).

Fault tolerance: actors restart when their process dies (``max_restarts``) and Ray retries
the call that was running (``max_task_retries``); patch writes are idempotent, so
at-least-once execution is safe. A call that fails for good reaches the driver as the
worker's own exception (the type and message an in-process call raises), its remote
traceback as a note, not as Ray's wrapper whose message is that whole coloured traceback;
a worker that died for good is a :class:`~dipfill.errors.WorkerError`.

Progress within a batch: each actor answers ``progress()`` from a concurrency group of its
own while its one ``fit`` runs, and the driver asks the busy actors every few seconds.

A local cluster this driver started ends with it: at exit, and on SIGTERM or SIGINT
(:func:`start_ray`). Ray's own log records go to the application's logging, so
``dipfill --log-format json`` prints nothing but JSON.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from dipfill.errors import ClusterError, WorkerError
from dipfill.pipeline.executor import FAULT_ENV, BatchProgress, EngineWorker

__all__ = ["start_ray", "stop_ray", "EnginePool", "engine_pool", "worker_failure"]

log = logging.getLogger(__name__)

#: The actors' concurrency group for ``progress()``: answered while ``fit`` runs.
PROGRESS_GROUP = "progress"

#: Terminal colour codes (Ray colours its tracebacks and messages).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")

def start_ray(address: str | None = None, *, num_cpus: int | None = None) -> dict[str, Any]:
    """Join the cluster at ``address`` (default ``$RAY_ADDRESS``, which ``ray job submit``
    sets), or start a fresh local one on 127.0.0.1 without the dashboard.

    Joining: token authentication is switched on for this driver when a token is at hand
    and ``RAY_AUTH_MODE`` is unset, the rule ``ray start`` applies to the head (Ray 2.5x+:
    a head started where ``~/.ray/auth_token`` exists requires the token, and a driver
    given an address does not send it unless told to). Raises :class:`ClusterError` when
    the cluster cannot be joined or started: no scene is to blame for that.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Both settings are read when Ray is first imported.
    if address:
        _token_auth_as_ray_start()
    if not address or _loopback(address):
        # Ray's own IP lookups then answer 127.0.0.1: no component of a local cluster listens
        # beyond loopback, and a loopback address is not rewritten to the machine's IP (Ray
        # does that to 127.0.0.1 addresses, and a head bound to loopback is not there).
        # Never for other addresses: a driver on a cluster node must know its real address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if not ray.is_initialized():
        _route_ray_logging()
        try:
            if address:
                _check_reachable(address)
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                # address="local": a new cluster of this driver's own, never one found in /tmp/ray
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, configure_logging=False)
                _stop_on_signals()
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = f"join the Ray cluster at {address}" if address else "start a local Ray cluster"
            raise ClusterError(f"cannot {where}: {type(exc).__name__}: {exc}") from exc
    return dict(ray.cluster_resources())


def _route_ray_logging() -> None:
    """Ray's driver-side messages go to the application's logging, like any library's.

    * Records of Ray's logger ``ray`` (e.g. its token-authentication notice at start-up),
      which Ray prints itself, in plain text, to stderr: they broke
      ``dipfill --log-format json`` (every stderr line JSON). Handlers an application
      added to ``ray`` stay; the level becomes the application's.
    * Errors the cluster publishes to the driver (a task retried, a worker died), which
      Ray's listener thread prints in colour to *stdout*, into the run summary and
      ``dipfill run --json``'s record: they become WARNING records of ``ray``, colour codes
      stripped (Ray has no switch for that thread; its printer is replaced).
    """
    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        if type(handler).__module__.startswith("ray."):
            ray_logger.removeHandler(handler)
    ray_logger.setLevel(logging.NOTSET)
    ray_logger.propagate = True
    import ray._private.worker as ray_worker

    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = _log_published_errors


def _log_published_errors(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Ray's ``print_to_stdstream`` for the driver's error listener, as log records."""
    source = data.get("pid") or "ray"
    for line in data.get("lines") or ():
        text = _ANSI.sub("", str(line)).strip()
        if text:
            logging.getLogger("ray").warning("(%s) %s", source, text)


#: The signal handlers :func:`_stop_on_signals` replaced, restored by :func:`stop_ray`.
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT stop the local cluster this driver started before the driver
    ends: its GCS, raylet, agents and engine workers would otherwise outlive a killed
    driver (the agents for minutes). SIGTERM then exits non-zero, SIGINT raises
    KeyboardInterrupt as usual. (Ray shuts it down at a normal exit by itself.) Only from
    the main thread, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread() or _PREVIOUS_HANDLERS:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        _PREVIOUS_HANDLERS[sig] = signal.getsignal(sig)
        signal.signal(sig, _stop_and_exit)


def _restore_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in _PREVIOUS_HANDLERS.items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _PREVIOUS_HANDLERS.clear()


def _stop_and_exit(signum: int, frame: Any) -> None:
    import ray

    _restore_signals()  # a second signal acts at once
    _POOLS.clear()  # their actors go with the cluster
    try:
        _shutdown_quietly()
    except Exception as exc:  # noqa: BLE001 - exiting anyway; say why the cluster may linger
        log.warning("stopping the local Ray cluster on %s failed: %s", signal.Signals(signum).name, exc)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _shutdown_quietly() -> None:
    """``ray.shutdown()`` with this process's stderr (file descriptor 2) pointed at the Ray
    session's log directory meanwhile: abandoning running tasks makes Ray's C++ core print a
    plain line per task there ("Failed to push error to driver"), which would break
    ``--log-format json``. Anything else written to stderr meanwhile is kept in that file."""
    import sys

    import ray
    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    logs = getattr(node, "get_logs_dir_path", None)
    target = os.path.join(logs(), "dipfill-driver-shutdown.err") if logs else os.devnull
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 2)
        os.close(fd)
        ray.shutdown()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_reachable(address: str) -> None:
    """Fail fast on a GCS address nothing listens on (``ray.init`` would retry forever):
    retried for ``$DIPFILL_RAY_CONNECT_TIMEOUT`` seconds (default 15), e.g. while a head
    node is still booting."""
    import socket
    import time

    timeout = float(os.environ.get("DIPFILL_RAY_CONNECT_TIMEOUT", "15"))
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", ray:// client addresses: Ray resolves those itself
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 5.0)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"nothing accepts connections at {address} ({exc})") from None
            time.sleep(1.0)


def _token_auth_as_ray_start() -> None:
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if os.environ.get("RAY_AUTH_TOKEN") or path.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def stop_ray() -> None:
    """Kill the engine actors and disconnect from (or stop, when local) the cluster."""
    import ray

    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()
    if ray.is_initialized():
        ray.shutdown()
    _restore_signals()


def worker_failure(exc: BaseException) -> BaseException:
    """What a failed actor call raises on the driver.

    A task error (``RayTaskError``) becomes the worker's own exception, so the driver sees
    the type and one-line message an in-process call would raise, with Ray's remote
    traceback (colour codes stripped) as a note for the log. An actor that died for good,
    or a cause that could not travel, becomes :class:`~dipfill.errors.WorkerError` with
    Ray's first line. Anything else is returned as it is."""
    from ray.exceptions import RayActorError, RayError, RayTaskError

    if not isinstance(exc, (RayTaskError, RayActorError)):
        return exc
    details = _ANSI.sub("", str(exc)).strip()
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    if isinstance(cause, Exception) and not isinstance(cause, RayError):
        error: BaseException = cause
    else:
        first = next((ln.strip() for ln in details.splitlines() if ln.strip()), "")
        kind = type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__
        error = WorkerError(f"{kind}: {first}" if first else kind)
    try:
        error.add_note(f"on a Ray worker:\n{details}")
    except AttributeError:  # Python < 3.11: the details stay on the chained exception
        error.__cause__ = exc
    return error


def _get(refs: Any) -> Any:
    """``ray.get`` with failed calls raised as :func:`worker_failure` makes them."""
    import ray

    try:
        return ray.get(refs)
    except Exception as exc:  # noqa: BLE001 - re-raised, translated
        error = worker_failure(exc)
        if error is exc:
            raise
        raise error from error.__cause__  # None, or Ray's wrapper where notes do not exist


_POOLS: dict[str, "EnginePool"] = {}


def engine_pool(engine: str, engine_options: dict[str, Any], fallback: str) -> "EnginePool":
    """A pool for this engine configuration, reused across runs in one driver process:
    starting an actor (a Python process importing torch) costs seconds, a batch may not."""
    import json

    key = json.dumps([engine, engine_options, fallback, os.environ.get(FAULT_ENV, "")], sort_keys=True, default=str)
    if key not in _POOLS:
        # One pool at a time: actors of another configuration hold the cluster's CPUs/GPUs,
        # and new actors would wait for them forever.
        for old in _POOLS.values():
            old.close()
        _POOLS.clear()
        _POOLS[key] = EnginePool(engine, engine_options, fallback)
    return _POOLS[key]


class EnginePool:
    """Engine actors, one batch in flight per actor: one per GPU of the cluster (CPU actors,
    one per CPU, on a cluster without GPUs), growing when nodes join.

    Why grow: spot workers come back, and an autoscaler or an operator adds nodes while a
    long run is going; every ``grow_every`` seconds the pool adds an actor for each GPU (CPU)
    the cluster has beyond the actors it holds. It never shrinks: an actor whose node is
    gone is restarted by Ray (``max_restarts``) when capacity returns, and its call retried.
    ``size`` fixes the pool instead.
    """

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str, *, size: int | None = None,
                 gpus: bool | None = None, grow_every: float = 10.0, progress_every: float = 2.0) -> None:
        import ray

        resources = ray.cluster_resources()
        self.gpus = bool(resources.get("GPU", 0)) if gpus is None else gpus
        opts: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 3}
        opts.update({"num_gpus": 1} if self.gpus else {"num_cpus": 1})
        env = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
        if env:
            opts["runtime_env"] = {"env_vars": env}
        threads = None if self.gpus else 1  # CPU actors share the cores: one torch thread each
        # progress() has a thread of its own; fit and blend stay one at a time
        actor_cls = ray.remote(concurrency_groups={PROGRESS_GROUP: 1})(EngineWorker).options(**opts)
        self._new = lambda: actor_cls.remote(engine, dict(engine_options), fallback, threads)  # noqa: E731
        self.fixed = size is not None
        self.grow_every = grow_every
        self.progress_every = progress_every
        self.actors: list[Any] = []
        self.grow(size)
        # Start-up (a Python process importing torch per actor) is paid here, not by the
        # first scene's timings.
        _get([a.ready.remote() for a in self.actors])

    def capacity(self) -> int:
        """Actors the cluster has room for now (at least one)."""
        import ray

        resources = ray.cluster_resources()
        return max(1, int(resources.get("GPU", 0)) if self.gpus else int(resources.get("CPU", 1)))

    def grow(self, size: int | None = None) -> list[Any]:
        """Add actors up to ``size`` (default: :meth:`capacity`); returns the new ones."""
        target = self.capacity() if size is None else size
        new = [self._new() for _ in range(max(0, target - len(self.actors)))]
        if new and self.actors:
            log.info("engine pool: %d actor(s) added (%d in all): the cluster grew", len(new), target)
        self.actors += new
        return new

    def run(self, tasks: Iterable[Any], on_done: Callable[[Any, Any], None], method: str = "fit",
            on_progress: Callable[[Any, BatchProgress], None] | None = None) -> None:
        """Call ``method`` (``fit`` or ``blend``) on an actor for every task, one task in
        flight per actor; ``on_done(task, result)`` is called on the driver as each finishes,
        and ``on_progress(task, BatchProgress)`` every ``progress_every`` seconds for each
        fit that has reported steps. A call that failed for good raises
        :func:`worker_failure`'s exception."""
        import ray

        queue = list(tasks)
        pending: dict[Any, tuple[Any, Any]] = {}
        free = list(self.actors)
        watch = on_progress if method == "fit" else None
        checked = polled = time.monotonic()
        periods = ([] if self.fixed else [self.grow_every]) + ([self.progress_every] if watch else [])
        while queue or pending:
            while queue and free:
                actor = free.pop()
                task = queue.pop(0)
                pending[getattr(actor, method).remote(task)] = (task, actor)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(periods) if periods else None)
            if not self.fixed and time.monotonic() - checked >= self.grow_every:
                free += self.grow()
                checked = time.monotonic()
            if watch is not None and time.monotonic() - polled >= self.progress_every:
                self._poll(pending, watch)
                polled = time.monotonic()
            if ready:
                task, actor = pending.pop(ready[0])
                on_done(task, _get(ready[0]))
                free.append(actor)

    def _poll(self, pending: dict[Any, tuple[Any, Any]], on_progress: Callable[[Any, BatchProgress], None]) -> None:
        """Ask every busy actor how far its batch is; an actor that does not answer within a
        second (restarting, its node gone) is skipped this time."""
        import ray
        from ray.exceptions import RayError

        asks = {actor.progress.options(concurrency_group=PROGRESS_GROUP).remote(): task
                for task, actor in pending.values()}
        answered, _ = ray.wait(list(asks), num_returns=len(asks), timeout=1.0)
        for ref in answered:
            try:
                progress = ray.get(ref)
            except RayError:
                continue
            if progress is not None:
                on_progress(asks[ref], progress)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
