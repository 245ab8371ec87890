"""How `omni flower` runs Flower, so it shows the workers and times the way operators read them.

- **Every worker, without ?refresh=1.** Flower inspects the workers once, when
  it starts; under ``omni up`` the workers are still booting then, so
  ``/api/workers`` listed one or two of them until someone asked for a refresh.
  Here the inspection is repeated every ``REFRESH_S`` seconds (a worker too
  busy to answer one, such as the solo watchdog mid-tick, answers the next;
  the reply timeout stays Flower's 1 s, which every ``?refresh=1`` waits out).
- **Times in UTC, labelled.** Celery's ``timezone`` is the exchange's zone (beat's
  crontabs need it); Flower would show task times in New York time with no
  label. This process alone shows UTC, as the CLI and /health do, and the task
  list's time columns say so.
- **Its /metrics is its own.** Flower serves prometheus-client's default
  registry: the ``omni_*`` and ``celery_*`` metrics our modules define are taken
  out of it (the metrics server exports them, once), and Flower writes no
  multiprocess files (``prepare("flower")`` leaves ``PROMETHEUS_MULTIPROC_DIR``
  unset), so ``flower_*`` stays on Flower's own /metrics.
"""

from __future__ import annotations

from typing import Any

#: Seconds between two inspections of every worker (Flower's own: only at start).
REFRESH_S = 15.0
#: Flower's task list columns that hold times.
TIME_COLUMNS = ("received", "started", "timestamp", "eta")
DISPLAY_TZ = "UTC"


def drop_our_metrics_from_default_registry() -> int:
    """Unregister every metric of :mod:`omni_tasks.ops.prometheus` from prometheus-client's default registry; how many."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    from omni_tasks.ops import prometheus as metrics

    dropped = 0
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            try:
                REGISTRY.unregister(value)
                dropped += 1
            except KeyError:  # already out (called twice)
                pass
    return dropped


def label_time_columns(tz_name: str = DISPLAY_TZ) -> None:
    """The task list's time columns say their zone ("Received (UTC)")."""
    from flower.views import tasks

    for column in TIME_COLUMNS:
        label = tasks.TASK_COLUMNS.get(column)
        if label is not None and not label.endswith(f"({tz_name})"):
            tasks.TASK_COLUMNS[column] = f"{label} ({tz_name})"


def flower_class(refresh_s: float = REFRESH_S) -> type[Any]:
    """Flower, inspecting every worker again every ``refresh_s`` seconds."""
    from flower.app import Flower
    from tornado.ioloop import PeriodicCallback

    class OmniFlower(Flower):
        def start(self) -> None:
            PeriodicCallback(self.update_workers, refresh_s * 1000).start()
            super().start()

    return OmniFlower


def run(celery_app: Any, argv: list[str]) -> None:
    """Start Flower (``argv``: its options) with the changes above. Blocks until Flower stops."""
    from flower import command

    drop_our_metrics_from_default_registry()
    celery_app.conf.timezone = DISPLAY_TZ  # display only: this process schedules nothing
    label_time_columns()
    # flower.command builds the app from its module-level name; ours adds the periodic inspection.
    command.Flower = flower_class()
    celery_app.start(["flower", *argv])
