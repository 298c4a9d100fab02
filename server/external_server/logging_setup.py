"""Logging of docs/protocol.md §6.4: a console and a rotating file handler, each with its own level.

Lines look like::

    [2024-05-01 12:00:00.123] [external-server] [INFO]\t [session.py:42]\t(car_a)\tConnected.
    [2024-05-01 12:00:00.123] [external-server] [INFO]\t [app.py:10] (server)\tServing.

A record is a car line when it carries the attribute ``car_name``; :func:`car_logger`
adds it to every record, so code that logs for a car uses that adapter and never
formats the car name itself. Handlers are attached to the ``external_server`` logger
(records still propagate, so pytest's caplog keeps working); :func:`setup_logging` can
be called any number of times and replaces only the handlers it created.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from logging.handlers import RotatingFileHandler
from typing import Any

from .config.models import LoggingSettings

SERVER_LOGGER = "external_server"
CAR_LOGGER = "external_server.car"
CAR_ATTR = "car_name"
LOG_FILE_NAME = "external_server.log"
MAX_BYTES = 10_485_760
BACKUP_COUNT = 5
_HANDLER_NAMES = ("external-server-console", "external-server-file", "external-server-null")


class LineFormatter(logging.Formatter):
    """The reference line layout: car lines ``\\t(<car>)\\t``, server lines `` (server)\\t``."""

    default_time_format = "%Y-%m-%d %H:%M:%S"
    default_msec_format = "%s.%03d"

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        car = getattr(record, CAR_ATTR, None)
        scope = f"\t({car})" if isinstance(car, str) else " (server)"
        line = (
            f"[{self.formatTime(record)}] [external-server] [{record.levelname}]\t "
            f"[{record.filename}:{record.lineno}]{scope}\t{record.message}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class CarLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """Adds ``car_name`` to every record (merging with any ``extra`` the caller gives)."""

    def __init__(self, logger: logging.Logger, car_name: str) -> None:
        super().__init__(logger, {CAR_ATTR: car_name})
        self.car_name = car_name

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), CAR_ATTR: self.car_name}
        return msg, kwargs


def car_logger(car_name: str, logger: logging.Logger | None = None) -> CarLoggerAdapter:
    """A logger whose every line names ``car_name``; ``logger`` defaults to ``external_server.car``."""
    return CarLoggerAdapter(logger or logging.getLogger(CAR_LOGGER), car_name)


def reset_logging(logger_name: str = SERVER_LOGGER) -> None:
    """Remove (and close) the handlers :func:`setup_logging` added; restore the level."""
    logger = logging.getLogger(logger_name)
    for handler in list(logger.handlers):
        if handler.get_name() in _HANDLER_NAMES:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.NOTSET)


def _named(handler: logging.Handler, name: str, level: str) -> logging.Handler:
    handler.set_name(name)
    handler.setLevel(level)
    handler.setFormatter(LineFormatter())
    return handler


def setup_logging(settings: LoggingSettings, logger_name: str = SERVER_LOGGER) -> logging.Logger:
    """Install the configured handlers (replacing earlier ones); OSError if the log file cannot open."""
    reset_logging(logger_name)
    logger = logging.getLogger(logger_name)
    handlers: list[logging.Handler] = []
    if settings.console.use:
        handlers.append(_named(logging.StreamHandler(sys.stderr), _HANDLER_NAMES[0], settings.console.level))
    if settings.file.use and settings.file.path is not None:
        file_handler = RotatingFileHandler(
            settings.file.path / LOG_FILE_NAME, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8"
        )
        handlers.append(_named(file_handler, _HANDLER_NAMES[1], settings.file.level))
    if not handlers:
        # Nothing configured: keep Python's last-resort stderr handler from printing instead.
        null = logging.NullHandler()
        null.set_name(_HANDLER_NAMES[2])
        logger.addHandler(null)
        logger.setLevel(logging.CRITICAL + 1)
        return logger
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(min(handler.level for handler in handlers))
    return logger
