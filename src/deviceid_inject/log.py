"""Logging to stderr and the configured log file; never to stdout, which carries the protocol.

A deliberately small logger object that is passed around, instead of the
logging module's process-wide registry.
"""

from __future__ import annotations

import os
import sys
import time

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

LEVELS = {"error": 40, "warning": 30, "info": 20, "debug": 10}


class Log:
    def __init__(self, level: str = "warning", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS[level]
        self.stream = stream if stream is not None else sys.stderr
        self.file: TextIO | None = None
        self.context = ""

    def open_file(self, path: str) -> None:
        """Append to `path`; a log file we cannot open must not fail the attachment."""
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            self.warning(f"cannot open log file {path}: {exc.strerror}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def error(self, msg: str) -> None:
        self._emit("error", msg)

    def warning(self, msg: str) -> None:
        self._emit("warning", msg)

    def info(self, msg: str) -> None:
        self._emit("info", msg)

    def debug(self, msg: str) -> None:
        self._emit("debug", msg)

    def _emit(self, level: str, msg: str) -> None:
        if not self.enabled(level):
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = f"{stamp} deviceid-inject[{os.getpid()}] {level.upper()} {self.context}{msg}\n"
        for out in (self.stream, self.file):
            if out is None:
                continue
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):
                pass
