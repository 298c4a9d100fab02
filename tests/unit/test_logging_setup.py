"""Logging (docs/protocol.md §6.4, checklist §8.2 item 24)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path

import pytest
from external_server.config import FileHandlerSettings, HandlerSettings, LoggingSettings
from external_server.logging_setup import (
    BACKUP_COUNT,
    LOG_FILE_NAME,
    MAX_BYTES,
    SERVER_LOGGER,
    car_logger,
    reset_logging,
    setup_logging,
)

STAMP = r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}\]"
LOCAL = "test_logging_setup.py"


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Other tests must not inherit our handlers or level."""
    reset_logging()
    yield
    reset_logging()


def settings(
    console: str = "DEBUG", file: str = "DEBUG", use_console: bool = True, path: Path | None = None
) -> LoggingSettings:
    return LoggingSettings(
        console=HandlerSettings(level=console, use=use_console),  # type: ignore[arg-type]
        file=FileHandlerSettings(level=file, use=path is not None, path=path),  # type: ignore[arg-type]
    )


def our_handlers() -> list[logging.Handler]:
    return [
        h
        for h in logging.getLogger(SERVER_LOGGER).handlers
        if (h.get_name() or "").startswith("external-server")
    ]


def test_item_24_debug_message_emitted_with_console_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    """Item 24: console logging at DEBUG emits a debug message logged on the server logger."""
    setup_logging(settings(console="DEBUG"))
    logging.getLogger(SERVER_LOGGER).debug("debug message")
    err = capsys.readouterr().err
    assert "debug message" in err and "[DEBUG]" in err


def test_console_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(settings(console="WARNING"))
    log = logging.getLogger(SERVER_LOGGER)
    log.info("quiet")
    log.warning("loud")
    err = capsys.readouterr().err
    assert "quiet" not in err and "loud" in err


def test_server_line_format(capsys: pytest.CaptureFixture[str]) -> None:
    """§6.4: ``[stamp] [external-server] [LEVEL]\\t [file:line] (server)\\ttext``."""
    setup_logging(settings())
    logging.getLogger("external_server.anything").info("server text")
    line = capsys.readouterr().err.rstrip("\n")
    assert re.fullmatch(
        STAMP + rf" \[external-server\] \[INFO\]\t \[{LOCAL}:\d+\] \(server\)\tserver text", line
    )


def test_car_line_format_and_extra_merge(capsys: pytest.CaptureFixture[str]) -> None:
    """§6.4: car lines carry ``\\t(<car name>)\\t``; car_logger injects the name automatically."""
    setup_logging(settings())
    car_logger("car_a").warning("car %s", "text", extra={"other": 1})
    line = capsys.readouterr().err.rstrip("\n")
    assert re.fullmatch(
        STAMP + rf" \[external-server\] \[WARNING\]\t \[{LOCAL}:\d+\]\t\(car_a\)\tcar text", line
    )


def test_car_logger_on_a_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    adapter = car_logger("car_b", logging.getLogger("external_server.session"))
    with caplog.at_level(logging.INFO, logger=SERVER_LOGGER):
        adapter.info("hello")
    assert [(r.name, getattr(r, "car_name", None)) for r in caplog.records] == [
        ("external_server.session", "car_b")
    ]


def test_exceptions_are_appended(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(settings())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger(SERVER_LOGGER).exception("failed")
    err = capsys.readouterr().err
    assert "failed\nTraceback" in err and "RuntimeError: boom" in err


def test_file_handler_rotates_in_the_configured_directory(tmp_path: Path) -> None:
    """§6.4: ``<path>/external_server.log``, 10 485 760 bytes, 5 backups, its own level."""
    setup_logging(settings(console="ERROR", file="INFO", path=tmp_path))
    files = [h for h in our_handlers() if isinstance(h, RotatingFileHandler)]
    assert len(files) == 1
    assert (files[0].maxBytes, files[0].backupCount) == (MAX_BYTES, BACKUP_COUNT) == (10_485_760, 5)
    logging.getLogger(SERVER_LOGGER).info("to the file")
    logging.getLogger(SERVER_LOGGER).debug("below the file level")
    files[0].flush()
    content = (tmp_path / LOG_FILE_NAME).read_text()
    assert "to the file" in content and "below the file level" not in content


def test_use_flags_switch_handlers_off(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(settings(use_console=False))
    logging.getLogger(SERVER_LOGGER).critical("nowhere")
    assert capsys.readouterr().err == ""
    assert logging.getLogger(SERVER_LOGGER).level > logging.CRITICAL


def test_setup_is_idempotent(tmp_path: Path) -> None:
    """Repeated setup replaces its own handlers and leaves foreign ones alone."""
    foreign = logging.NullHandler()
    logging.getLogger(SERVER_LOGGER).addHandler(foreign)
    try:
        for _ in range(3):
            setup_logging(settings(path=tmp_path))
        assert len(our_handlers()) == 2
        assert foreign in logging.getLogger(SERVER_LOGGER).handlers
        setup_logging(settings(console="INFO"))
        assert len(our_handlers()) == 1
        assert logging.getLogger(SERVER_LOGGER).level == logging.INFO
    finally:
        logging.getLogger(SERVER_LOGGER).removeHandler(foreign)


def test_logger_level_is_the_lowest_handler_level(tmp_path: Path) -> None:
    setup_logging(settings(console="ERROR", file="DEBUG", path=tmp_path))
    assert logging.getLogger(SERVER_LOGGER).level == logging.DEBUG


def test_import_has_no_side_effect() -> None:
    """Importing the module (and the CLI) installs no handler and sets no level."""
    code = (
        "import logging, external_server.cli, external_server.logging_setup;"
        "l = logging.getLogger('external_server');"
        "print(len(l.handlers), l.level, len(logging.root.handlers))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", "0", "0"]
