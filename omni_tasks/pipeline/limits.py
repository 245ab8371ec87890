"""Celery's time limits as domain code meets them: the exception a soft time limit raises inside a task.

A provider loop that must stop cleanly at the soft limit catches
:class:`SoftTimeLimitExceeded` from here, never from billiard itself.
"""

from __future__ import annotations

from billiard.exceptions import SoftTimeLimitExceeded

__all__ = ["SoftTimeLimitExceeded"]
