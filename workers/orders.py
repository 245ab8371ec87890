from omni_tasks.pipeline.queues import Queue
from workers.base import WorkerKind

KIND = WorkerKind(
    name="orders",
    queues=(Queue.ORDERS,),
    pool="prefork",
    concurrency=1,
    max_tasks_per_child=1000,
    description="order submission through the pre-trade checks; refused while the kill switch is engaged",
)
