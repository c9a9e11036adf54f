"""A Dask cluster on this machine for torch campaigns (:func:`local_cluster`): the settings its
scheduler and workers run with (:data:`QUIET`) and how they survive restarts and ``scale()``. See the
runner's notes (:mod:`bitlab.campaigns.runner`) for why Dask's default malloc trimming is left out."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DASK_TRIM", "QUIET", "local_cluster"]


#: the Dask settings :func:`local_cluster` starts its scheduler and workers with: no aggressive malloc
#: trimming (see the module notes); no sampling of the running task's stack every 10 ms (the dashboard's
#: profile page); the event-loop tick, memory monitor and system monitor at a calmer pace; no work stealing
#: (a campaign's chunks are equal by construction). On a 2-core machine, where the scheduler, the client
#: and the workers share the cores, a sweep's chunks took about 8% less worker time with them (compute
#: 1.01-1.09 s against 1.09-1.18 s for the same 1,200 trials, four runs each).
QUIET: dict[str, object] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.scheduler.work-stealing": False,
}

#: the MALLOC_TRIM_THRESHOLD_ Dask's nannies set by default (and leave in the environment of their process)
DASK_TRIM = "65536"


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, config: dict | None = None, **kwargs: Any) -> Any:
    """A ``dask.distributed.LocalCluster`` of ``n_workers`` processes with ``threads_per_worker`` threads
    each, set up for torch campaigns with the settings :data:`QUIET` (updated by ``config``, e.g.
    ``{"distributed.worker.profile.enabled": True}`` to see the dashboard's profile), one OpenMP thread
    per worker thread (Dask's default), no dashboard unless ``dashboard_address`` is given. Use it as
    ``Client(local_cluster(2))``; close it (or use it in a ``with`` block) when done.

    The workers keep the settings when they restart (``client.restart()``) and when ``cluster.scale(n)``
    adds some. A Nanny copies its pre-spawn variables into this process's ``os.environ`` for good, and a
    variable there wins over the configuration: Dask's own trim value, left by an earlier default cluster
    of this process, is taken out of ``os.environ`` (and not put back, or a restart would inherit it);
    a value set by hand is left alone, and reaches the workers."""
    import dask
    from distributed import LocalCluster  # an optional extra: pip install bitlab[dask]

    settings = {**QUIET, **(config or {})}
    kwargs.setdefault("dashboard_address", None)
    # every Nanny (also one scale() adds later) hands its worker process this whole configuration at each
    # start, and reads its pre-spawn environment under the settings
    kwargs.setdefault("config", dask.config.merge(dask.config.config, _nested(settings)))
    kwargs.setdefault("worker_class", _nanny_under(settings))
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == DASK_TRIM:
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    with dask.config.set(settings):  # the scheduler's, and the nannies' pre-spawn environment
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, **kwargs)


def _nanny_under(settings: dict[str, object]) -> type:
    """A ``distributed.Nanny`` whose pre-spawn environment is read under ``settings``, also when
    ``scale()`` builds it after the cluster's own configuration block has ended."""
    import dask
    from distributed import Nanny

    class QuietNanny(Nanny):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with dask.config.set(settings):
                super().__init__(*args, **kwargs)

    return QuietNanny


def _nested(dotted: dict[str, object]) -> dict[str, Any]:
    """``{"a.b.c": v}`` as ``{"a": {"b": {"c": v}}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out
