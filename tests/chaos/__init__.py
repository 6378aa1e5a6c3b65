"""A fault suite anyone can run (issue #13, item 8): ``make chaos``.

Real workers, beat and servers; SIGKILLs of workers, broker restarts and ``kill -9``,
PostgreSQL backends terminated, a worker SIGSTOPped mid vendor call, and a burst with
transient vendor errors; then the books are checked. Not part of ``make test`` (the
integration test ``tests/integration/test_chaos.py`` runs the smallest two).
"""
