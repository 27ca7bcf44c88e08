"""The text log: one line per record, whatever a client put in it (CWE-117)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

from dicomstore.cli.logs import TEXT_FORMAT, TextFormatter, one_line


def capture(name: str) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter(TEXT_FORMAT))
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, out, handler


def test_control_characters_are_escaped_a_tab_kept() -> None:
    assert (
        one_line("a\nb\r\x1b[31mc\td\u2028e\x85\x7f") == "a\\nb\\r\\x1b[31mc\td\\u2028e\\x85\\x7f"
    )
    assert one_line("Müller^Hans 1.2.3") == "Müller^Hans 1.2.3"


def test_a_record_is_one_line_its_traceback_follows() -> None:
    logger, out, handler = capture("dicomstore.test_logs")
    try:
        logger.info("path %s", "/studies\n2026-01-01 00:00:00,000 INFO forged")
        try:
            raise ValueError("x")
        except ValueError:
            logger.exception("failed\r\nagain")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("path /studies\\n2026-01-01 00:00:00,000 INFO forged")
    assert lines[1].endswith("failed\\r\\nagain")
    assert lines[2] == "Traceback (most recent call last):"  # (its own lines, as ever)


def test_every_command_logs_text_on_one_line() -> None:
    """setup_logging (every command's) writes text records through TextFormatter."""
    code = (
        "import logging; from dicomstore.cli.logs import setup_logging; setup_logging();"
        " logging.getLogger('dicomstore.x').warning('GET %s', '/a\\nforged')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("GET /a\\nforged\n")


def test_debug_leaves_out_the_plugin_chatter_of_libraries() -> None:
    """review56: `--log-level debug` began with twenty 'pylibjpeg.utils: Found plugin'
    lines; their DEBUG records are dropped, their warnings and ours kept."""
    code = (
        "import logging; from dicomstore.cli.logs import setup_logging;"
        " setup_logging('debug');"
        " logging.getLogger('pylibjpeg.utils').debug('Found plugin x');"
        " logging.getLogger('pylibjpeg.utils').warning('a warning');"
        " logging.getLogger('dicomstore.x').debug('ours')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Found plugin" not in done.stderr
    assert "a warning" in done.stderr and "ours" in done.stderr
