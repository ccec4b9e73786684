"""Scale-out on Ray: run independent per-model jobs as Ray tasks, and hand their results to the driver.

The driver alone reads inputs and writes outputs: each job's inputs travel with its task (inputs that every task
needs, such as the defender's data, go once into Ray's object store), and each task returns its result to the
driver, whose writer callback stores it exactly as the sequential path does. No folder is shared with the workers,
so a cluster whose nodes share nothing but the network works; the driver's own copy of ``banscan`` is shipped to
the workers (Ray's ``py_modules``), so every node runs the driver's code.

Ray does the scheduling (declared resources per task, fractional GPUs), the retries (``max_retries`` for a worker
that died, ``retry_exceptions`` for transient errors) and the object transfer. A job that still fails is reported
to the driver with its reason and the run goes on; a :class:`~banscan._utils.BanscanError` (bad input or
configuration, which would fail the same way on every job) ends the run, as it does on the sequential path.

Ray is an optional dependency (``pip install "banscan[ray]"``); it is imported only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._utils import BanscanError, progress_enabled

__all__ = ["RayConfig", "TaskFailure", "ray_available", "ray_session", "run_tasks"]
log = logging.getLogger(__name__)

RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (OSError, MemoryError)
"""Errors worth a retry on another attempt (a full disk or a dropped connection, memory that another task held);
a deterministic error would only fail again. CUDA running out of memory is added when torch is there."""


@dataclass(frozen=True)
class RayConfig:
    """Where to run and what each task may use.

    Args:
        address: a running cluster to join (``ray start --head`` prints it; ``"auto"`` finds a local one); ``None``
            starts a local instance with this machine's cores and GPUs (or ``num_cpus``/``num_gpus``).
        cpus_per_task: CPUs Ray reserves for each task (and the task's torch threads, at least 1).
        gpus_per_task: GPUs per task; a fraction lets several small models share one GPU (``0.25``: four).
        max_retries: attempts after the first for a task whose worker died or that raised a retryable error.
        num_cpus: size of a local instance (ignored when joining a cluster).
        num_gpus: GPUs of a local instance (ignored when joining a cluster).
    """

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_retries: int = 2
    num_cpus: int | None = None
    num_gpus: int | None = None

    def check(self) -> None:
        if not self.cpus_per_task > 0:
            raise BanscanError(f"--cpus-per-task must be positive, got {self.cpus_per_task}")
        if not self.gpus_per_task >= 0:
            raise BanscanError(f"--gpus-per-task must be 0 or more, got {self.gpus_per_task}")
        if self.gpus_per_task > 1 and self.gpus_per_task != int(self.gpus_per_task):
            raise BanscanError(f"--gpus-per-task above 1 must be a whole number, got {self.gpus_per_task}")
        if self.max_retries < 0:
            raise BanscanError(f"max_retries must be 0 or more, got {self.max_retries}")


@dataclass(frozen=True)
class TaskFailure:
    """A job that failed for good (after its retries): its key, the reason, and what kind of failure it was."""

    key: Hashable
    reason: str
    kind: str  # "error" (the job raised), "worker_died", "node_died", "out_of_memory", "lost" or "cancelled"


def ray_available() -> bool:
    """Whether Ray can be imported (``pip install "banscan[ray]"``)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BanscanError('--ray needs Ray, an optional dependency: pip install "banscan[ray]" '
                           '(or pip install "ray>=2.9"); without --ray the run is sequential') from None
    return ray


def _package_dir() -> str:
    return str(Path(__file__).resolve().parent)


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Start a local Ray instance or join a cluster for the duration of the block; yields the ``ray`` module.

    An instance that is already up in this process (``ray.init`` called by the caller) is used as it is and left
    running; one started here is shut down at the end.
    """
    cfg.check()
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    kw: dict[str, Any] = {"runtime_env": {"py_modules": [_package_dir()]}, "include_dashboard": None,
                          "log_to_driver": True}
    if cfg.address is not None:
        kw["address"] = cfg.address
    else:  # "local": a new instance, even where `ray start` left a cluster that ray.init() would join
        kw.update(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    try:
        ray.init(**kw)
    except ConnectionError as e:
        raise BanscanError(f"cannot join the Ray cluster at {cfg.address!r}: {e}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _threads(cpus: float) -> int:
    return max(1, int(cpus))


def _call(fn: Callable[..., Any], n_threads: int, kwargs: Mapping[str, Any], **shared: Any) -> Any:
    """What a task runs: ``fn(**kwargs, **shared)`` with ``n_threads`` torch threads (the task's CPUs).

    ``shared`` arrive as top-level object references, which Ray resolves to their values before the call.
    """
    import torch

    torch.set_num_threads(n_threads)
    return fn(**kwargs, **shared)


def _retryable() -> list[type[BaseException]]:
    out = list(RETRY_EXCEPTIONS)
    try:
        import torch

        out.append(torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    return out


def _failure(ray: Any, key: Hashable, e: BaseException) -> TaskFailure:
    ex = ray.exceptions
    kinds = [(getattr(ex, "WorkerCrashedError", ()), "worker_died"), (getattr(ex, "ActorDiedError", ()), "worker_died"),
             (getattr(ex, "NodeDiedError", ()), "node_died"), (getattr(ex, "OutOfMemoryError", ()), "out_of_memory"),
             (getattr(ex, "ObjectLostError", ()), "lost"), (getattr(ex, "TaskCancelledError", ()), "cancelled")]
    for cls, kind in kinds:
        if cls and isinstance(e, cls):
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return TaskFailure(key, f"{type(e).__name__}: {first}"[:500], kind)
    cause = getattr(e, "cause", None) or e
    return TaskFailure(key, f"{type(cause).__name__}: {cause}"[:2000], "error")


def _slots(ray: Any, cfg: RayConfig) -> int:
    """How many tasks of this shape the cluster can run at once."""
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cfg.cpus_per_task)
    if cfg.gpus_per_task > 0:
        n = min(n, int(round(res.get("GPU", 0) / cfg.gpus_per_task, 6)))
        if n < 1:
            raise BanscanError(f"the Ray cluster has {res.get('GPU', 0):g} GPUs; a task asks for {cfg.gpus_per_task}")
    if n < 1:
        raise BanscanError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs; a task asks for {cfg.cpus_per_task}")
    return n


class _Bar:
    """One progress bar on the driver: done / running / failed, with tqdm's rate and ETA."""

    def __init__(self, desc: str, total: int | None, slots: int) -> None:
        from tqdm.auto import tqdm

        self.slots = slots
        self.bar = tqdm(total=total, desc=desc, disable=not progress_enabled(), dynamic_ncols=True, unit="task")

    def update(self, done: int, in_flight: int, failed: int, step: int) -> None:
        self.bar.set_postfix_str(f"done {done} running {min(in_flight, self.slots)} "
                                 f"queued {max(0, in_flight - self.slots)} failed {failed}", refresh=False)
        self.bar.update(step)

    def close(self) -> None:
        self.bar.close()


# Ten arguments and 80 lines: the one loop that submits (bounded), waits, writes and cancels; its arguments are
# the hooks a caller plugs in (writer, failure handler, shared inputs, limits), each documented below.
def run_tasks(fn: Callable[..., Any], jobs: Iterable[tuple[Hashable, Mapping[str, Any]]], cfg: RayConfig,
              on_result: Callable[[Hashable, Any], None],
              on_failure: Callable[[TaskFailure], None] | None = None,
              shared: Mapping[str, Any] | None = None, desc: str = "tasks", total: int | None = None,
              fatal: tuple[type[BaseException], ...] = (BanscanError,),
              max_in_flight: int | None = None) -> dict[str, int]:
    """Run ``fn(**kwargs, **shared)`` for every ``(key, kwargs)`` of ``jobs`` as one Ray task each.

    Args:
        fn: a module-level function (workers import it by name); its arguments and result must pickle.
        jobs: ``(key, kwargs)`` pairs, read lazily: at most ``max_in_flight`` jobs' inputs are in the cluster at
            a time (Ray's pattern for bounding pending tasks), so a driver can stream thousands of models.
        cfg: where to run and each task's resources and retries (within a :func:`ray_session`, or one is
            started for the call).
        on_result: the driver's writer, called as ``on_result(key, result)`` as each task completes (in
            completion order); if it raises, the tasks still in flight are cancelled and the error propagates.
        on_failure: called with a :class:`TaskFailure` for a job that failed after its retries; without it a
            failure is logged only. The run goes on either way.
        shared: inputs every task needs, put into the object store once and passed to ``fn`` by name.
        desc: the progress bar's label; ``total`` its length when ``jobs`` has no ``len``.
        fatal: exception types raised by ``fn`` that end the run (re-raised on the driver, the rest cancelled).
        max_in_flight: jobs submitted and not yet finished (default: twice what the cluster runs at once).

    Returns counts: ``{"done", "failed"}``.
    """
    with ray_session(cfg) as ray:
        slots = _slots(ray, cfg)
        limit = max_in_flight or 2 * slots
        refs = {k: ray.put(v) for k, v in (shared or {}).items()}
        remote = ray.remote(_call).options(
            num_cpus=cfg.cpus_per_task, num_gpus=cfg.gpus_per_task, max_retries=cfg.max_retries,
            retry_exceptions=_retryable(), name=getattr(fn, "__name__", "task"))
        n_threads = _threads(cfg.cpus_per_task)
        if total is None and hasattr(jobs, "__len__"):
            total = len(jobs)  # type: ignore[arg-type]
        bar = _Bar(desc, total, slots)
        pending: dict[Any, Hashable] = {}
        counts = {"done": 0, "failed": 0}
        it = iter(jobs)
        exhausted = False
        t0 = time.perf_counter()
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    try:
                        key, kwargs = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[remote.remote(fn, n_threads, dict(kwargs), **refs)] = key
                bar.update(counts["done"], len(pending), counts["failed"], 0)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    key = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, fatal):
                            raise cause from None
                        fail = _failure(ray, key, e)
                        log.error("%s: %s failed for good (%s): %s", desc, key, fail.kind, fail.reason)
                        counts["failed"] += 1
                        if on_failure is not None:
                            on_failure(fail)
                    else:
                        on_result(key, value)
                        counts["done"] += 1
                    bar.update(counts["done"], len(pending), counts["failed"], 1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        log.info("%s: %d done, %d failed in %.1fs on %d slots", desc, counts["done"], counts["failed"],
                 time.perf_counter() - t0, slots)
        return counts

