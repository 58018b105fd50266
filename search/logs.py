"""Process logging for the entry points: LOG_LEVEL, LOG_FORMAT (text or json), no secrets.

``setup()`` is called once by an entry point (a library never configures its host's
logging). Our loggers (``bot``, ``search``) log at LOG_LEVEL; every other library at
WARNING (ERROR when LOG_LEVEL is ERROR) unless LOG_LEVEL is DEBUG. Libraries that log through the root logger (open_clip
calls ``logging.info``) are named after their module, so no line says ``root``; their INFO
lines are dropped with the rest of the third-party chatter. Secrets given to ``setup()``,
and any ``key=`` query parameter, are masked in every line, tracebacks included.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from .config import LOG_FORMATS, LOG_LEVELS

OURS = ("bot", "search", "bench")
MASK = "***"
# Pixabay takes its key as a query parameter: any URL that reaches a log line loses it.
_KEY_PARAM = re.compile(r"([?&](?:key|token)=)[^&\s\"'<>]+", re.IGNORECASE)
_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Masking:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return _KEY_PARAM.sub(r"\1" + MASK, text)


class TextFormatter(logging.Formatter):
    """``2026-11-27T12:40:01.123Z INFO bot.searches: search outcome=results …`` (UTC)"""

    converter = staticmethod(time.gmtime)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
                         datefmt="%Y-%m-%dT%H:%M:%S")
        self._masking = _Masking(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._masking.mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields,
    and ``exception`` (the traceback as one string) when there is one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._masking = _Masking(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _ATTRS and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return self._masking.mask(json.dumps(entry, default=str, ensure_ascii=False))


def _name_root_records(record: logging.LogRecord) -> bool:
    """Give a record logged on the root logger its module's dotted name."""
    if record.name == "root":
        record.name = _module_name(record.pathname) or record.module
    return True


_module_names: dict[str, str] = {}


def _module_name(path: str) -> str | None:
    if path not in _module_names:
        for name, module in list(sys.modules.items()):
            if getattr(module, "__file__", None) == path:
                _module_names[path] = name
                break
        else:
            return None
    return _module_names[path]


def _drop_voice_warnings(record: logging.LogRecord) -> bool:
    # discord.py warns at start-up that voice libraries are missing; the bot has no voice.
    return "voice will NOT be supported" not in str(record.msg)


def setup(level: str = "INFO", fmt: str = "text", *, secrets: Iterable[str] = (),
          stream: TextIO | None = None) -> logging.Handler:
    """Send every log line to ``stream`` (stderr) as LOG_LEVEL and LOG_FORMAT say."""
    if level not in LOG_LEVELS or fmt not in LOG_FORMATS:
        raise ValueError(f"level must be one of {LOG_LEVELS}, fmt one of {LOG_FORMATS}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    handler.addFilter(_name_root_records)
    handler.addFilter(_drop_voice_warnings)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level)
    # The root level is the third-party level: records logged on a library's own logger
    # inherit it, and ``logging.info()`` calls on the root logger are checked against it.
    # Libraries are never chattier than we are, nor below WARNING unless we are at DEBUG.
    root.setLevel(logging.DEBUG if numeric == logging.DEBUG else max(numeric, logging.WARNING))
    for name in OURS:
        logging.getLogger(name).setLevel(numeric)
    # aiosqlite logs every statement with its parameters at DEBUG, interaction tokens too.
    logging.getLogger("aiosqlite").setLevel(max(numeric, logging.INFO))
    logging.captureWarnings(True)
    return handler
