"""A benchmark scenario: one YAML file under `bench/scenarios/` (or any path).

    name: paraphrase-qqp
    description: one line for `stratacache bench list`
    backend: {ttft_ms: 20, tokens_per_s: 4000, answer_tokens: 48}   # the simulated backend
    nominal: {ttft_ms: 500, tokens_per_s: 40}   # what "seconds saved" is priced at
    proxy: {semantic: {threshold: 0.9}}          # merged into the proxy's config file
    workload: {kind: pairs, data: ../shared/data/qqp-val/pairs.csv, limit: 600}
    concurrency: 8
    fault: {kind: redis-restart, kill_at_s: 20, down_s: 8}   # optional
    peers: [gptcache, litellm]                    # optional

Unknown fields are errors, as in the proxy's own config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendTiming(_Model):
    ttft_ms: float = Field(default=50.0, ge=0)
    tokens_per_s: float = Field(default=2000.0, ge=0, description="0: no per-token delay")
    answer_tokens: int = Field(default=48, ge=1, description="natural answer length (X-Sim-Answer-Tokens)")


class NominalTiming(_Model):
    """A realistic backend, used to price the backend time that hits save."""

    ttft_ms: float = Field(default=500.0, ge=0)
    tokens_per_s: float = Field(default=40.0, gt=0)


class Workload(_Model):
    kind: Literal["exact", "pairs", "multi-turn", "zipf", "burst"]
    data: str | None = None              # pairs / conversations file (relative: cwd, repo, shared data)
    followups: str | None = None         # multi-turn: generic follow-ups ("Can you expand on that?")
    limit: int | None = Field(default=None, ge=1)  # pairs or conversations sampled
    count: int = Field(default=200, ge=1)           # requests (exact, zipf) or bursts (burst)
    repeats: int = Field(default=0, ge=0)           # pairs: exact repeats of seeded questions among the probes
    prompts: int = Field(default=40, ge=1)          # distinct prompts (exact) / topics (zipf)
    burst_size: int = Field(default=32, ge=1)
    zipf_s: float = Field(default=1.1, gt=0)
    mix: dict[str, float] = Field(default_factory=lambda: {"repeat": 0.6, "paraphrase": 0.3, "novel": 0.1})
    stream: float = Field(default=0.5, ge=0, le=1, description="share of requests sent with stream: true")
    max_tokens: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0, description="open loop: requests per second")
    seed: int = 7


class Fault(_Model):
    kind: Literal["redis-restart"]
    kill_at_s: float = Field(default=15.0, ge=0)
    down_s: float = Field(default=8.0, ge=0)


class Scenario(_Model):
    name: str
    description: str = ""
    backend: BackendTiming = BackendTiming()
    nominal: NominalTiming = NominalTiming()
    proxy: dict[str, Any] = Field(default_factory=dict)
    workload: Workload
    concurrency: int = Field(default=8, ge=1, le=512)
    direct_baseline: bool = True
    fault: Fault | None = None
    peers: list[Literal["gptcache", "litellm"]] = Field(default_factory=list)
    peer_threshold: float | None = Field(default=None, gt=0, le=1,
                                         description="similarity threshold given to semantic peers")
    source: str | None = Field(default=None, exclude=True)


class ScenarioError(ValueError):
    """A scenario that cannot be found or read, with the reason."""


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by name (`paraphrase-qqp`) or a YAML file by path."""
    p = Path(name_or_path)
    if not p.exists():
        p = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        raise ScenarioError(f"no scenario {name_or_path!r} (bundled: {', '.join(scenario_names())})")
    try:
        data = yaml.safe_load(p.read_text()) or {}
        sc = Scenario(**data)
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"cannot read {p}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"{p}: {problems}") from exc
    sc.source = str(p)
    return sc
