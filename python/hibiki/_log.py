"""Logging helpers shared by the server and the command line.

Every record the server writes about a connection carries ``channel_id`` and
``connection_id`` attributes (see :class:`ConnectionLogger`); the formatter in
:func:`log_config` prints them as ``[channel_id/connection_id]``. Records from
other loggers (uvicorn, libraries) get ``-`` so that one format string fits all.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

__all__ = ["ConnectionLogger", "ContextDefaultsFilter", "QuietClientErrorsFilter", "log_config"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(channel_id)s/%(connection_id)s] %(message)s"


class ConnectionLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A LoggerAdapter that stamps ``channel_id`` and ``connection_id`` on each record.

    The context is mutable because a signaling session learns its channel and
    connection ids only after the ``connect`` message: call :meth:`bind`.
    """

    def __init__(self, logger: logging.Logger, channel_id: str = "-", connection_id: str = "-") -> None:
        super().__init__(logger, {"channel_id": channel_id, "connection_id": connection_id})

    def bind(self, *, channel_id: str | None = None, connection_id: str | None = None) -> None:
        """Update the ids stamped on later records."""
        assert self.extra is not None
        ctx: dict[str, Any] = dict(self.extra)
        if channel_id is not None:
            ctx["channel_id"] = channel_id
        if connection_id is not None:
            ctx["connection_id"] = connection_id
        self.extra = ctx

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        # Merge instead of replacing, so callers may still pass their own extra=.
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class ContextDefaultsFilter(logging.Filter):
    """Give records that lack them ``channel_id``/``connection_id`` = ``-``.

    Attached to handlers, so that records from any logger can use LOG_FORMAT.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "channel_id"):
            record.channel_id = "-"
        if not hasattr(record, "connection_id"):
            record.connection_id = "-"
        return True


class QuietClientErrorsFilter(logging.Filter):
    """Drop the traceback uvicorn logs when a *client* sends invalid UTF-8 in a text frame.

    uvicorn closes such a socket with 1007 (correct) but logs it with
    ``logger.exception``; a client's bad input is not a server bug, so keep the
    line as a warning without the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "Invalid UTF-8" in str(record.msg):
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
        return True


def log_config(level: str = "info") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict for uvicorn's ``log_config``.

    One stderr handler, one format, for uvicorn's loggers and ``hibiki.*``.
    """
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": ContextDefaultsFilter},
            "quiet_client_errors": {"()": QuietClientErrorsFilter},
        },
        "formatters": {
            "default": {"format": LOG_FORMAT},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["context", "quiet_client_errors"],
            },
        },
        "loggers": {
            "hibiki": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": ["stderr"], "level": lvl, "propagate": False},
        },
    }
