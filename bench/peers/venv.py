"""A virtual environment per peer, installed from PyPI with pip, reused across runs.

Peers pin dependencies that cannot live with ours (GPTCache wants openai 0.28, LiteLLM
openai < 3), so each gets its own venv under the bench cache folder. A venv is keyed by
its requirement list; it is marked ready only after every install step succeeded, so a
failed or interrupted install is redone next time rather than half used.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

INSTALL_TIMEOUT_S = 900


class PeerInstallError(RuntimeError):
    """A peer's venv could not be built; the message carries pip's last words."""


def cache_root() -> Path:
    base = os.environ.get("STRATACACHE_BENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stratacache" / "bench"
    return Path(base)


class PeerVenv:
    def __init__(self, name: str, requirements: list[str], root: Path | None = None) -> None:
        self.name = name
        self.requirements = list(requirements)
        tag = hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()[:10]
        self.dir = (root or cache_root() / "peers") / f"{name}-{tag}"

    @property
    def python(self) -> Path:
        return self.dir / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    @property
    def ready(self) -> bool:
        return (self.dir / ".ready").exists()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for processes of this peer: its venv first on PATH (GPTCache runs
        `pip install` at import time with whatever pip it finds first)."""
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["VIRTUAL_ENV"] = str(self.dir)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env.update(extra or {})
        return env

    def ensure(self, log_path: Path) -> Path:
        """Create and install the venv unless it is ready; returns its python."""
        if self.ready:
            return self.python
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        self._run([base, "-m", "venv", str(self.dir)], log_path)
        self._run([str(self.python), "-m", "pip", "install", "-q", "--upgrade", "pip"], log_path)
        self._run([str(self.python), "-m", "pip", "install", "-q", *self.requirements], log_path)
        (self.dir / ".ready").write_text("\n".join(self.requirements) + "\n")
        return self.python

    def version_of(self, package: str) -> str | None:
        try:
            r = subprocess.run([str(self.python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                               capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() or None

    def _run(self, argv: list[str], log_path: Path) -> None:
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                   timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                raise PeerInstallError(f"{self.name}: `{' '.join(argv[:4])}...` timed out") from exc
        if r.returncode != 0:
            tail = log_path.read_text(errors="replace")[-600:]
            raise PeerInstallError(f"{self.name}: `{' '.join(argv[:5])}...` failed ({r.returncode}): {tail}")
