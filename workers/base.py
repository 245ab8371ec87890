"""What a worker kind is: its queues, pool, concurrency and recycling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from omni_tasks.pipeline.queues import Queue


@dataclass(frozen=True)
class WorkerKind:
    """One kind of worker process. ``omni worker NAME`` starts it; ``omni up`` supervises one of each."""

    name: str
    queues: tuple[Queue, ...]
    pool: Literal["prefork", "solo", "threads"]
    concurrency: int
    max_tasks_per_child: int | None = None
    max_memory_per_child_kb: int | None = None
    description: str = ""

    def celery_argv(self, *, concurrency: int | None = None, loglevel: str = "INFO") -> list[str]:
        """Arguments for ``celery worker`` (without the program name)."""
        argv = [
            "worker",
            f"--queues={','.join(q.value for q in self.queues)}",
            f"--pool={self.pool}",
            f"--concurrency={concurrency or self.concurrency}",
            f"--hostname={self.name}@%h",
            f"--loglevel={loglevel}",
            "--task-events",
            "--without-mingle",
            "--without-gossip",
            "--prefetch-multiplier=1",
        ]
        if self.max_tasks_per_child:
            argv.append(f"--max-tasks-per-child={self.max_tasks_per_child}")
        if self.max_memory_per_child_kb:
            argv.append(f"--max-memory-per-child={self.max_memory_per_child_kb}")
        return argv
