from omni_tasks.pipeline.queues import Queue
from workers.base import WorkerKind

KIND = WorkerKind(
    name="scans",
    queues=(Queue.SCANS,),
    pool="prefork",
    concurrency=2,
    max_tasks_per_child=500,
    description="market scans over chunks of the universe (CPU-bound, vectorised)",
)
