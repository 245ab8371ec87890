from omni_tasks.pipeline.queues import Queue
from workers.base import WorkerKind

KIND = WorkerKind(
    name="watchdog",
    queues=(Queue.WATCHDOG,),
    pool="solo",
    concurrency=1,
    description="health rules, breakers, kill switch; solo and alone so a backlog elsewhere never delays it",
)
