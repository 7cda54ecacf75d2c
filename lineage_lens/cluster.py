"""Work beyond one process, on Ray (the optional extra ``pip install 'lineage-lens[cluster]'``).

lineage-lens schedules nothing itself: a lineage report's per-model steps
(:func:`lineage_lens.report.lineage_report` with ``executor="ray"``) and a data-parallel capture
(:func:`lineage_lens.capture.collect_head_activations` with ``workers=N``) run as Ray tasks.
Ray retries a task whose worker dies (``max_retries``); every step a task writes is published
atomically, so a retried task never finds a half-written step counted as done.

Ray is imported only when an executor other than ``"serial"`` is asked for: the default runs in
one process and never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from lineage_lens.errors import ConfigError

log = logging.getLogger(__name__)

#: Where work runs: ``serial`` (this process, the default) or ``ray`` (tasks on a Ray cluster).
EXECUTORS: tuple[str, ...] = ("serial", "ray")
#: Retries of a task whose worker died (a crash, an out-of-memory kill, a lost node).
DEFAULT_MAX_RETRIES = 3
#: Environment variables a worker needs to find the same caches and stay offline as the driver.
FORWARDED_ENV: tuple[str, ...] = (
    "LINEAGE_LENS_CACHE",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)


def check_executor(executor: str) -> str:
    """``executor`` if it is one of :data:`EXECUTORS`, else a :class:`ConfigError`."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}.")
    return executor


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the ray executor needs Ray, which is not installed: pip install "
            "'lineage-lens[cluster]' (or run without --executor ray)."
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address`` (``None``: the one in ``RAY_ADDRESS``, else a
    new local cluster of ``num_cpus`` CPUs), yield the ``ray`` module, and disconnect afterwards
    if this call connected. A session already connected in this process is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    kwargs: dict[str, Any] = {
        "address": address,
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": env} if env else None,
    }
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus
    # ray.init installs its own SIGTERM/SIGINT handlers in the driver; the caller's come back after
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        _restore_handlers(handlers)
        raise ConfigError(
            f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')!r} "
            f"({exc}); start it with 'ray start --head' or pass its address."
        ) from exc
    log.info("connected to Ray: %s", ray.cluster_resources())
    try:
        yield ray
    finally:
        ray.shutdown()
        _restore_handlers(handlers)


def _restore_handlers(handlers: dict[signal.Signals, Any]) -> None:
    """Put back the signal handlers ``ray_session`` found (only the main thread may set them)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        if handler is not None:  # None: installed from outside Python, cannot be restored
            signal.signal(sig, handler)


def task_options(device: str | None, max_retries: int = DEFAULT_MAX_RETRIES) -> dict[str, Any]:
    """Ray task options for one model's work: one CPU, and one GPU when ``device`` is CUDA."""
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}.")
    gpus = 1 if device is not None and str(device).startswith("cuda") else 0
    return {"num_cpus": 1, "num_gpus": gpus, "max_retries": max_retries}


def run_tasks(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    *,
    device: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    desc: str = "ray tasks",
    progress: bool = True,
) -> list[Any]:
    """``[fn(*args) for args in calls]``, each call a Ray task (in a connected session, see
    :func:`ray_session`), results in the order of ``calls``.

    A task whose worker dies is retried up to ``max_retries`` times; an exception raised by
    ``fn`` is not retried and is re-raised here as itself (a ``LineageLensError`` stays one).
    """
    ray = import_ray()
    remote = ray.remote(fn).options(**task_options(device, max_retries))
    refs = [remote.remote(*args) for args in calls]
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        if cause is not None:
            raise cause from None
        raise
