"""Structured JSON logs: one object per line, extra fields included."""
from __future__ import annotations

import logging
import sys

import orjson

_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "info") -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # faiss >= 1.9 dispatches to AVX2/AVX-512 inside one library; its loader still logs, at
    # info, that the older per-ISA modules are missing, which reads like a failure
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
