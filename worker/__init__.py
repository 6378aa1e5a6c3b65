"""The Celery side: the app, thin tasks on a base class that owns retries, the send
pipeline, the recovery sweeps and the fulfilment adapter.

Importing this package builds nothing. ``celery -A worker`` finds the app in
:mod:`worker.celery`, which builds it from the environment; code that wants an app for
other settings (the demo, tests) calls :func:`worker.factory.create_app`.
"""
