"""What the L3 decision reports beyond `cache.tiered.Hit` and `SemanticProbe`: the
threshold it applied (the static one, or an entry's calibrated one) and, on a miss, the
grey-zone candidate (verified, above the consider threshold, under its threshold) whose
pair the proxy learns from after answering.

Separate from `cache.semantic_stage` only because `cache.tiered` imports that module.
"""
from __future__ import annotations

from dataclasses import dataclass

from cache.entry import Key
from cache.tiered import Hit, SemanticProbe


@dataclass(frozen=True, slots=True)
class GreyCandidate:
    """A verified candidate that was not served: the pair (query, cached) to learn from."""

    key: Key
    similarity: float
    cached_text: str
    query_text: str
    threshold: float


@dataclass(frozen=True, slots=True)
class ThresholdedHit(Hit):
    threshold: float | None = None
    rule: str | None = None
    """"static" (semantic.threshold or a rule), "global" (calibration, no evidence) or "calibrated"."""


@dataclass(frozen=True, slots=True)
class ThresholdedProbe(SemanticProbe):
    threshold: float | None = None
    """The threshold applied to the best verified candidate (None: no verified candidate)."""
    rule: str | None = None
    grey: GreyCandidate | None = None
