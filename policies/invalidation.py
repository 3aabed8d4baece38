"""Bans (Varnish-style): predicates over entry metadata, checked lazily on every hit
and swept in the background (pure).

A ban applies to entries stored at or before the moment it was issued; later entries
are unaffected, so a ban can be dropped once every entry it could match has expired.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Ban:
    id: str
    issued_at: float
    tags: tuple[str, ...] = ()
    model: str | None = None
    namespace: str | None = None
    tenant: str | None = None
    created_before: float | None = None
    request_digest: str | None = None
    everything: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Ban":
        return cls(id=str(d["id"]), issued_at=float(d["issued_at"]), tags=tuple(d.get("tags") or ()),
                   model=d.get("model"), namespace=d.get("namespace"), tenant=d.get("tenant"),
                   created_before=d.get("created_before"), request_digest=d.get("request_digest"),
                   everything=bool(d.get("everything")))

    @property
    def is_empty(self) -> bool:
        return not (self.tags or self.model is not None or self.namespace is not None or self.tenant is not None
                    or self.created_before is not None or self.request_digest is not None or self.everything)


def ban_matches(ban: Ban, *, created_at: float, tags: tuple[str, ...], model: str, namespace: str,
                tenant: str, request_digest: str = "") -> bool:
    """All given criteria must hold (an AND), for an entry stored before the ban."""
    if created_at > ban.issued_at or ban.is_empty:
        return False
    if ban.everything:
        return True
    if ban.tags and not set(ban.tags) & set(tags):
        return False
    if ban.model is not None and ban.model != model:
        return False
    if ban.namespace is not None and ban.namespace != namespace:
        return False
    if ban.tenant is not None and ban.tenant != tenant:
        return False
    if ban.created_before is not None and created_at >= ban.created_before:
        return False
    if ban.request_digest is not None and ban.request_digest != request_digest:
        return False
    return True
