"""Shared basics every room uses: errors, logs, Redis keys and clients, locks, inputs, secrets, counters, the per-process runtime.

Nothing here imports Celery, kombu or billiard."""
