"""Log lines for machines and people: JSON (one object a line) or text with key=value.

The pipeline logs one line per state change with ``extra={"job_id": ..., ...}``; these
formatters put those fields on the line, so every line about a job carries its job_id
and member.
"""

from __future__ import annotations

import json
import logging
from typing import Any

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "data"}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
            **extras(record),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extras(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"


class NoRejectTraceback(logging.Filter):
    """Celery logs every ``Reject`` with a traceback. Ours are expected paths -- a retry
    that could not be published is requeued (``worker.tasks.base``), already said in one
    warning line -- so the line stays and the traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery.exceptions import Reject

        if record.exc_info and isinstance(record.exc_info[1], Reject):
            record.exc_info = record.exc_text = None
        return True


def configure(logger: logging.Logger | None, log_format: str, level: int | str | None) -> None:
    """Put our formatter on the handlers Celery set up (and the root's), at its level."""
    trace = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, NoRejectTraceback) for f in trace.filters):
        trace.addFilter(NoRejectTraceback())
    formatter = JsonFormatter() if log_format == "json" else KeyValueFormatter(TEXT_FORMAT)
    for target in {logger, logging.getLogger()} - {None}:
        for handler in target.handlers:
            handler.setFormatter(formatter)
    if level is not None:
        logging.getLogger("credits").setLevel(level)
