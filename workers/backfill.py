from omni_tasks.pipeline.queues import Queue
from workers.base import WorkerKind

KIND = WorkerKind(
    name="backfill",
    queues=(Queue.BACKFILL,),
    pool="prefork",
    concurrency=2,
    max_tasks_per_child=200,
    max_memory_per_child_kb=1_500_000,
    description="historical bars per partition; prefetch 1, long tasks, idempotent upserts",
)
