"""What may be stored and read (pure).

Defaults a careful operator would want, all configurable:
- sampling temperature > 0 is cached: temperature is part of the key, so an entry only
  ever answers the same temperature; an app that wants fresh samples sends
  `Cache-Control: no-cache` or sets `max_temperature`.
- `n > 1`, logprobs and tool calls are cached exactly (all are in the key).
- semantic (L3) matching is off for requests that carry `tools`/`functions`, `n > 1`
  or logprobs: a paraphrase can call the same tool with other arguments, and token-level
  outputs are tied to the exact wording.
- error responses and cut-off streams are never stored; nor is an entry over
  `max_entry_bytes`.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CacheabilityPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_temperature: float | None = Field(default=None, ge=0, description="bypass above this (None: no limit)")
    cache_multiple_choices: bool = True
    cache_logprobs: bool = True
    cache_tool_calls: bool = True
    semantic_with_tools: bool = False
    max_entry_bytes: int = Field(default=1 << 20, gt=0)


def _number(v: object, default: float) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def bypass_reason(body: dict, policy: CacheabilityPolicy) -> str | None:
    """Why this request must not use the cache at all, or None."""
    if policy.max_temperature is not None and _number(body.get("temperature"), 1.0) > policy.max_temperature:
        return "temperature"
    if not policy.cache_multiple_choices and _number(body.get("n"), 1) > 1:
        return "n"
    if not policy.cache_logprobs and (body.get("logprobs") or body.get("top_logprobs")):
        return "logprobs"
    if not policy.cache_tool_calls and (body.get("tools") or body.get("functions")):
        return "tools"
    return None


def semantic_allowed(body: dict, policy: CacheabilityPolicy) -> bool:
    if not policy.semantic_with_tools and (body.get("tools") or body.get("functions")):
        return False
    if _number(body.get("n"), 1) > 1:
        return False
    if body.get("logprobs") is True or isinstance(body.get("logprobs"), int) and not isinstance(body.get("logprobs"), bool):
        return False
    return True
