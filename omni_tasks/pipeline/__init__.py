"""The Celery edge: the app, the task decorator, worker hooks, beat, queues, broker operations, heartbeats, the task-outcome ledger.

The only package that imports Celery, kombu or billiard; importing it does not create or configure the app."""
