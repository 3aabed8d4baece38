"""Configuration: one YAML file plus `STRATACACHE_*` environment variables.

Precedence: CLI flags > environment > YAML file > defaults. Nested fields use `__` in
environment names (`STRATACACHE_REDIS__URL`, `STRATACACHE_SEMANTIC__THRESHOLD`).
Unknown fields are errors, so a typo fails at start with the field's name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from policies.cacheability import CacheabilityPolicy
from policies.rules import Rule, TTLPolicy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedisSettings(_Section):
    url: str | None = Field(default=None, description="None: start a bundled redis-server; \"\": no Redis (L1 "
                            "only); redis://, rediss://, unix://, redis+sentinel://host:port[,...]/service[/db] or "
                            "redis+cluster://host:port[,...]")
    timeout_s: float = Field(default=0.25, gt=0, description="deadline of every Redis call")
    prefix: str = "sc:"
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url:
            from cache.redis_client import validate_url

            validate_url(url)  # RedisURLError is a ValueError: a validation error naming the field
        return url


class EmbedderSettings(_Section):
    model_path: str | None = None
    engine: Literal["auto", "torch", "onnx"] = "auto"
    device: str = "auto"
    timeout_s: float = Field(default=1.0, gt=0)
    threads: int = Field(default=1, ge=1)  # CPU threads per call of several texts
    single_text_threads: int | None = Field(default=None, ge=1)  # ONNX, a lone text; None: min(2, CPUs)


# -- calibration and the off-path judge (semantic.calibration, semantic.prior, semantic.evidence, judge)
class PriorSettings(_Section):
    """The global curve P(correct | s) = sigmoid(a + b*s) that calibrated thresholds start from
    (fitted on held-out QQP pairs for a 2% false-hit rate: `python -m bench.precision`)."""

    a: float = -8.065
    b: float = Field(default=10.22, gt=0)
    offset_sd: float = Field(default=2.0, gt=0, description="how far evidence may move a neighbourhood's curve")
    margin: float = Field(default=0.0028, ge=-0.2, le=0.2,
                          description="an entry without evidence starts at the static threshold plus this")


class EvidenceSettings(_Section):
    radius: float = Field(default=0.75, gt=0, le=1, description="neighbours this close to the query lend evidence")
    neighbours: int = Field(default=10, ge=0, le=64)
    same_answer_similarity: float = Field(default=0.90, gt=0, le=1,
                                          description="answer cosine at or above which two answers are the same")
    veto_weight: float = Field(default=0.0, ge=0, le=1, description="a verification veto as a wrong observation")
    cache_entries: int = Field(default=10_000, ge=1, description="evidence kept in-process (read-through)")
    cache_ttl_s: float = Field(default=30.0, gt=0)
    max_keys: int = Field(default=200_000, ge=1, description="entries with evidence; random ones drop past it")
    confirm_rate_per_s: float = Field(default=5.0, gt=0,
                                      description="exact-match confirmations a second at most (each embeds two "
                                                  "answers, off the request path; the rest are skipped)")
    confirm_concurrency: int = Field(default=1, ge=1)


class SemanticSettings(_Section):
    enabled: bool = True
    threshold: float = Field(default=0.944, gt=0, le=1,
                             description="cosine at or above which a verified candidate is served")
    consider_threshold: float = Field(default=0.80, gt=0, le=1, description="candidates below are never looked at")
    verify: bool = True
    shared_context_check: bool = Field(default=True, description=(
        "when the texts share segments (a template, retrieved context), serve only if the parts "
        "that differ also reach the threshold"))
    max_text_chars: int = Field(default=8192, ge=1, description=(
        "a longer last user turn is cached by the exact layers only (the embedding reads its first "
        "256 tokens; the checks cost ~1 ms of event loop per KB)"))
    k: int = Field(default=4, ge=1, le=64)
    near_miss_band: float = Field(default=0.05, ge=0, le=1)
    embedder: EmbedderSettings = EmbedderSettings()
    calibration: bool = Field(default=True, description="per-entry thresholds from evidence (off: threshold for all)")
    prior: PriorSettings = PriorSettings()
    evidence: EvidenceSettings = EvidenceSettings()


class JudgeSettings(_Section):
    """Off-path verification of grey-zone pairs by the upstream model (Krites-style)."""

    enabled: bool = False
    upstream: str | None = Field(default=None, description="None: the proxy's upstream")
    model: str | None = Field(default=None, description="None: the request's model")
    api_key: str | None = Field(default=None, description="None: forward the request's credentials")
    rate_per_s: float = Field(default=1.0, gt=0, description="judgements per second (token bucket)")
    burst: int = Field(default=5, ge=1)
    queue_size: int = Field(default=256, ge=1, description="pairs waiting; more are dropped")
    concurrency: int = Field(default=2, ge=1, le=64)
    timeout_s: float = Field(default=10.0, gt=0)
    alias: bool = Field(default=True, description="on yes, serve the cached answer for the new request's key")


class TenantSettings(_Section):
    mode: Literal["token", "header", "shared"] = "token"
    header: str = "X-Tenant-Id"


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=4 << 20, gt=0)
    max_tokens_ceiling: int | None = Field(default=None, gt=0)
    tenant_concurrency: int | None = Field(default=256, gt=0)


class UpstreamSettings(_Section):
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)
    max_connections: int = Field(default=512, gt=0)


class CoalesceSettings(_Section):
    enabled: bool = True
    lock_ttl_s: float = Field(default=10.0, gt=0)  # renewed by its leader every third of it
    follower_wait_s: float = Field(default=60.0, ge=0)
    live_relay: bool = True  # a replica following another's streaming answer gets it live, through Redis
    relay_flush_s: float = Field(default=0.02, gt=0, le=1.0)  # the leader writes its events at most this often


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRATACACHE_", env_nested_delimiter="__", extra="forbid")

    upstream: str = "http://127.0.0.1:9000"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    admin_token: str | None = None
    state_dir: str = Field(default_factory=lambda: str(Path.home() / ".local" / "state" / "stratacache"))
    l1_max_bytes: int = Field(default=256 << 20, gt=0)
    redis: RedisSettings = RedisSettings()
    semantic: SemanticSettings = SemanticSettings()
    ttl: TTLPolicy = TTLPolicy()
    rules: list[Rule] = Field(default_factory=list)
    cacheability: CacheabilityPolicy = CacheabilityPolicy()
    tenant: TenantSettings = TenantSettings()
    limits: LimitSettings = LimitSettings()
    upstream_http: UpstreamSettings = UpstreamSettings()
    coalesce: CoalesceSettings = CoalesceSettings()
    judge: JudgeSettings = JudgeSettings()
    log_prompts: bool = False
    access_log: bool = True
    log_level: str = "info"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # init carries the CLI flags merged over the YAML file; env sits between them in
        # `load_settings`, which passes only explicitly given flags as overrides.
        return (init_settings, env_settings)


class ConfigError(ValueError):
    """A bad configuration, with a message naming the field."""


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env_overrides() -> dict[str, Any]:
    """Values from STRATACACHE_* only (parsed by pydantic-settings, defaults excluded)."""
    class _EnvOnly(Settings):
        model_config = SettingsConfigDict(env_prefix="STRATACACHE_", env_nested_delimiter="__", extra="forbid")

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
            return (env_settings,)

    return _EnvOnly().model_dump(exclude_unset=True)


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """YAML file, then environment, then `overrides` (CLI flags). Raises ConfigError."""
    data: dict[str, Any] = {}
    try:
        if path is not None:
            text = Path(path).read_text()
            loaded = yaml.safe_load(text) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: the top level must be a mapping")
            data = loaded
        data = _deep_merge(data, _env_overrides())
        data = _deep_merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
