"""omni-tasks: the back office of an algorithmic-trading desk, as a Celery pipeline."""

__version__ = "0.1.0"
