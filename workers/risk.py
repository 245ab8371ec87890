from omni_tasks.pipeline.queues import Queue
from workers.base import WorkerKind

KIND = WorkerKind(
    name="risk",
    queues=(Queue.RISK,),
    pool="prefork",
    concurrency=1,
    max_tasks_per_child=1000,
    description="portfolio risk recalculation and snapshots",
)
