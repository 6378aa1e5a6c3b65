"""The ledger service tests again, on real PostgreSQL (``db`` is a PostgreSQL database here)."""

from tests.unit.test_ledger import *  # noqa: F403
