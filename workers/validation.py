from omni_tasks.pipeline.queues import Queue
from workers.base import WorkerKind

KIND = WorkerKind(
    name="validation",
    queues=(Queue.VALIDATION,),
    pool="prefork",
    concurrency=1,
    max_tasks_per_child=200,
    max_memory_per_child_kb=1_500_000,
    description="pandera checks, calendar gaps, quality reports, quarantine",
)
