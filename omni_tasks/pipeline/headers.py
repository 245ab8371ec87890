"""Names the pipeline writes on task messages and requests: plain constants, importable without Celery.

Readers of the broker (queue waits in :mod:`omni_tasks.pipeline.broker`), the
task decorator and the signal handlers all spell them from here.
"""

from __future__ import annotations

from typing import Final

#: Message header: when the message was published (UNIX seconds), stamped by the publish hook.
SENT_AT_HEADER: Final = "omni_sent_at"
#: Request attribute: a task that succeeded may name a more precise ledger state (e.g. EXPIRED: the order was past its deadline).
LEDGER_STATE_ATTR: Final = "omni_ledger_state"
