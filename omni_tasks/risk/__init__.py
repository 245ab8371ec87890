"""Portfolio risk: figures (:mod:`.metrics`), limit breaches (:mod:`.limits`), snapshots (:mod:`.snapshot`).

Plain Python; the Celery task is in :mod:`.tasks`.
"""
