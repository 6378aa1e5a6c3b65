"""Worker logging: expected paths say one line, bugs keep their traceback."""

from __future__ import annotations

import logging
import sys

from celery.exceptions import Reject

from worker.logs import NoRejectTraceback


def record_of(exc: Exception) -> logging.LogRecord:
    try:
        raise exc
    except Exception:
        exc_info = sys.exc_info()
    return logging.LogRecord("celery.app.trace", logging.WARNING, __file__, 1, "task %s",
                             ("x",), exc_info)  # fmt: skip


def test_a_requeued_reject_is_logged_without_its_traceback():
    record = record_of(Reject(OSError("broker down"), requeue=True))
    assert NoRejectTraceback().filter(record)
    assert record.exc_info is None
    assert "Traceback" not in logging.Formatter().format(record)


def test_any_other_error_keeps_its_traceback():
    record = record_of(ValueError("a bug"))
    assert NoRejectTraceback().filter(record)
    assert "Traceback" in logging.Formatter().format(record)
