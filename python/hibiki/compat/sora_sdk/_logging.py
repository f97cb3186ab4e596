"""``enable_libwebrtc_log`` and ``rtc_log``: sora-sdk's logging switches, mapped to Python logging.

sora-sdk turns on libwebrtc's own log (to stderr). Hibiki's client logs
through the standard :mod:`logging` module under the ``hibiki`` logger, so
these functions set that logger's level and, the first time, attach a stderr
handler to it. (The Rust engine's own trace goes to stderr when the
``HIBIKI_LOG`` environment variable is set, e.g. ``HIBIKI_LOG=debug``.)
"""

from __future__ import annotations

import logging
import threading

from ._enums import SoraLoggingSeverity

__all__ = ["enable_libwebrtc_log", "rtc_log"]

_LEVELS = {
    SoraLoggingSeverity.VERBOSE: logging.DEBUG,
    SoraLoggingSeverity.INFO: logging.INFO,
    SoraLoggingSeverity.WARNING: logging.WARNING,
    SoraLoggingSeverity.ERROR: logging.ERROR,
    # Above every level: nothing is printed.
    SoraLoggingSeverity.NONE: logging.CRITICAL + 10,
}

_lock = threading.Lock()
_handler: logging.Handler | None = None
_rtc_logger = logging.getLogger("hibiki.rtc")


def _level(severity: SoraLoggingSeverity | int) -> int:
    try:
        return _LEVELS[SoraLoggingSeverity(int(severity))]
    except (ValueError, KeyError):
        raise TypeError(f"expected a SoraLoggingSeverity, got {severity!r}") from None


def enable_libwebrtc_log(arg: SoraLoggingSeverity, /) -> None:
    """Print the SDK's log at ``arg`` and above to stderr.

    Differs from sora-sdk: there is no libwebrtc inside Hibiki; this sets the
    level of the ``hibiki`` Python logger (client SDK and codecs) and
    attaches one stderr handler to it, once. ``SoraLoggingSeverity.NONE``
    silences it. Applications that configure :mod:`logging` themselves can
    ignore this function.
    """
    level = _level(arg)
    global _handler
    logger = logging.getLogger("hibiki")
    with _lock:
        if _handler is None:
            _handler = logging.StreamHandler()
            _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(_handler)
        _handler.setLevel(level)
        logger.setLevel(level)


def rtc_log(arg0: SoraLoggingSeverity, arg1: str, /) -> None:
    """Write ``arg1`` to the SDK's log at severity ``arg0`` (sora-sdk writes to libwebrtc's log).

    Here it goes to the ``hibiki.rtc`` Python logger, so it appears next to
    the SDK's own records once :func:`enable_libwebrtc_log` (or any logging
    configuration) shows them.
    """
    level = _level(arg0)
    if arg0 == SoraLoggingSeverity.NONE:
        return
    _rtc_logger.log(level, "%s", arg1)
