"""Logging pieces referenced from conf/hydra/job_logging/kdrun.yaml."""

from __future__ import annotations

import logging


class BelowWarning(logging.Filter):
    """Lets through records below WARNING, which go to stdout; warnings and errors go to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING
