"""The credits domain: configuration, pricing, schemas, models and ledger services.

Nothing in this package imports Celery or ``worker`` except :mod:`shared.client`, the
producer client that flow engines import to publish jobs by task name.
"""
