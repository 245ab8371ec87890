"""News sentiment per symbol (DESIGN section 5): fetched from Alpha Vantage, stored with its provenance.

:mod:`omni_tasks.news.store` keeps articles idempotently (one row per
provider and URL, one per article and ticker); :mod:`omni_tasks.news.fetch`
fetches one symbol within the provider's shared rate limit and daily quota;
:mod:`omni_tasks.news.tasks` holds the Celery tasks (``omni.news.fetch``,
``omni.news.daily``). Plain Python except the tasks module.
"""
