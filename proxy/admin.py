"""Admin API under /admin (bearer admin token; off when none is configured)."""
from __future__ import annotations

from fastapi import FastAPI


def install_admin(app: FastAPI) -> None:
    return None
