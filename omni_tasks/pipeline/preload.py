"""The Celery side of what the fork server of `omni up` imports once for all its children.

Names only: nothing is imported here (the fork server, :mod:`omni_tasks.ops.zygote`, imports them
before its first fork). A worker starts through Celery's command line (which loads its plugins,
Flower among them), its consumer, pool and the Redis transport; beat and Flower share most of it.
None of these modules opens a connection or starts a thread when imported.
"""

from __future__ import annotations

MODULES = (
    "omni_tasks.pipeline.app",
    "omni_tasks.pipeline.taskdef",  # every task module, registered
    "omni_tasks.pipeline.hooks",
    "omni_tasks.pipeline.beat",
    "celery.bin.celery",
    "celery.apps.worker",
    "celery.apps.beat",
    "celery.worker.consumer",
    "celery.worker.components",
    "celery.worker.strategy",
    "celery.app.control",
    "celery.app.events",
    "celery.concurrency.prefork",
    "celery.concurrency.solo",
    "kombu.transport.redis",
    "celery.backends.redis",
)
