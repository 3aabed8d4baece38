"""Calibrated, per-entry similarity thresholds (after vCache, arXiv 2502.03771; our own code).

One global cosine threshold is too strict where paraphrases are loose (generic how-to
questions) and too lax where different questions look alike (templates that differ by a
name). Here each cached entry's threshold moves with evidence about the candidates it,
or its neighbours in embedding space, were matched against.

Model. A `GlobalPrior` holds a logistic curve P(correct | similarity) = sigmoid(a + b*s),
fitted on labelled pairs, and the global threshold `t0`: the lowest threshold whose
false-hit rate on those pairs stays under the operator's bound `max_false_hit_rate` (with a
confidence margin). The false-hit rate is the share of different-meaning candidates that
would be served. A neighbourhood may be better or worse than the global curve: its
evidence is a list of (similarity, correct) observations, and `decide` fits one offset `u`
so that P(correct | s, here) = sigmoid(a + b*s + u), with a Gaussian prior on `u` centred on
0 (so thin evidence barely moves it). The entry's threshold is where its curve reaches the
probability the global curve has at `t0`:

    t = t0 - u / b        clamped to [consider_threshold, 1]

Bad evidence (wrong at high similarity) makes `u` negative and raises `t`; good evidence
(correct at lower similarity) lowers it; without evidence `t = t0`, the conservative global
threshold. Observations in one neighbourhood are summed, so the threshold tightens or
loosens with the number of surprises, never on one noisy label alone.

Evidence comes from: exact-match confirmations (a request that missed although a
candidate was above `consider_threshold` gets a fresh answer; comparing it with the
candidate's answer says whether serving would have been right) and an off-path judge
auditing a sample of hits, both at weight 1 (what `bench.precision` measures). A
verification veto may be recorded as a down-weighted "wrong" (weight < 1); that source was
not measured. Evidence is stored per entry as a small dict (`Evidence.to_dict`), bounded to
the most recent observations; a decision pools the entry's own evidence with its
neighbours' (`Evidence.pool`, weights 0..1 by closeness to the query).

Pure: no I/O, no clock, no randomness.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Observation", "Evidence", "GlobalPrior", "GlobalCalibrator", "Decision", "decide",
    "fit_offset", "false_hit_upper_bound",
]

DEFAULT_CAPACITY = 32
"""Observations kept per entry: enough to move a threshold, small enough for a Redis hash field."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One candidate outcome: the cosine similarity and whether serving it was (or would be) right."""

    similarity: float
    correct: bool
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Evidence:
    """A bounded, immutable list of observations about one entry (or a pooled neighbourhood)."""

    observations: tuple[Observation, ...] = ()
    capacity: int = DEFAULT_CAPACITY

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def weight(self) -> float:
        return sum(o.weight for o in self.observations)

    def add(self, similarity: float, correct: bool, weight: float = 1.0) -> "Evidence":
        """A new Evidence with the observation appended; the oldest drop past `capacity`."""
        obs = self.observations + (Observation(float(similarity), bool(correct), float(weight)),)
        return Evidence(obs[-self.capacity:], self.capacity)

    @classmethod
    def pool(cls, parts: Iterable[tuple["Evidence", float]]) -> "Evidence":
        """Neighbourhood evidence: each part's observations scaled by its weight (0..1)."""
        obs: list[Observation] = []
        for evidence, weight in parts:
            if weight <= 0:
                continue
            obs.extend(Observation(o.similarity, o.correct, o.weight * weight)
                       for o in evidence.observations)
        return cls(tuple(obs), capacity=max(len(obs), 1))

    def to_dict(self) -> dict:
        """A small JSON-able dict: {"v": 1, "s": [similarities], "y": "1011", "w": [weights]?}."""
        out: dict = {
            "v": 1,
            "s": [round(o.similarity, 4) for o in self.observations],
            "y": "".join("1" if o.correct else "0" for o in self.observations),
        }
        if any(o.weight != 1.0 for o in self.observations):
            out["w"] = [round(o.weight, 3) for o in self.observations]
        if self.capacity != DEFAULT_CAPACITY:
            out["c"] = self.capacity
        return out

    @classmethod
    def from_dict(cls, data: dict | None) -> "Evidence":
        """Inverse of `to_dict`; an empty or unknown-version dict gives empty evidence."""
        if not data or data.get("v") != 1:
            return cls()
        sims, labels = data.get("s", []), data.get("y", "")
        weights = data.get("w") or [1.0] * len(sims)
        if not (len(sims) == len(labels) == len(weights)):
            return cls()
        obs = tuple(Observation(float(s), y == "1", float(w)) for s, y, w in zip(sims, labels, weights))
        capacity = int(data.get("c", DEFAULT_CAPACITY))
        return cls(obs[-capacity:], capacity)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class GlobalPrior:
    """The global curve and threshold every entry starts from.

    a, b                -- P(correct | s) = sigmoid(a + b*s) over candidates that passed verification
    threshold           -- t0: the conservative global threshold for `max_false_hit_rate`
    max_false_hit_rate  -- the operator's bound the threshold was chosen for
    offset_sd           -- prior standard deviation of a neighbourhood's logit offset `u`;
                           smaller means evidence moves thresholds less
    """

    a: float
    b: float
    threshold: float
    max_false_hit_rate: float
    offset_sd: float = 1.0

    @property
    def target_probability(self) -> float:
        """P(correct) the global curve gives at the global threshold: what each entry must reach."""
        return _sigmoid(self.a + self.b * self.threshold)

    def probability(self, similarity: float, offset: float = 0.0) -> float:
        return _sigmoid(self.a + self.b * similarity + offset)

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "threshold": self.threshold,
                "max_false_hit_rate": self.max_false_hit_rate, "offset_sd": self.offset_sd}

    @classmethod
    def from_dict(cls, data: dict) -> "GlobalPrior":
        return cls(float(data["a"]), float(data["b"]), float(data["threshold"]),
                   float(data["max_false_hit_rate"]), float(data.get("offset_sd", 1.0)))


def false_hit_upper_bound(false_hits: int, negatives: int, confidence: float = 0.9) -> float:
    """One-sided upper confidence bound of a false-hit rate (Wilson score interval)."""
    if negatives <= 0:
        return 1.0
    z = _z(confidence)
    p = false_hits / negatives
    denom = 1 + z * z / negatives
    centre = p + z * z / (2 * negatives)
    spread = z * math.sqrt(p * (1 - p) / negatives + z * z / (4 * negatives * negatives))
    return min(1.0, (centre + spread) / denom)


def _z(confidence: float) -> float:
    # inverse normal CDF by bisection: no scipy in policies/
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(slots=True)
class GlobalCalibrator:
    """Fits a `GlobalPrior` from labelled pairs (similarity, same meaning?).

    `eligible[i]` False marks a pair the verification stage vetoed: it counts among the
    negatives (or positives) but can never be served, and is left out of the curve.
    """

    max_false_hit_rate: float = 0.02
    consider_threshold: float = 0.80
    confidence: float = 0.9
    offset_sd: float = 1.0
    l2: float = 1e-3
    _sims: list[float] = field(default_factory=list)
    _labels: list[bool] = field(default_factory=list)
    _eligible: list[bool] = field(default_factory=list)

    def add(self, similarities: Sequence[float], labels: Sequence[bool | int],
            eligible: Sequence[bool] | None = None) -> None:
        if len(similarities) != len(labels) or (eligible is not None and len(eligible) != len(labels)):
            raise ValueError("similarities, labels and eligible must have the same length")
        self._sims.extend(float(s) for s in similarities)
        self._labels.extend(bool(y) for y in labels)
        self._eligible.extend(bool(e) for e in (eligible if eligible is not None else [True] * len(labels)))

    def threshold_for(self, max_false_hit_rate: float) -> float:
        """Lowest threshold (>= consider) whose upper-bound false-hit rate is <= the bound."""
        negatives = sum(1 for y in self._labels if not y)
        served_negatives = sorted(
            (s for s, y, e in zip(self._sims, self._labels, self._eligible) if not y and e),
            reverse=True,
        )
        # walk down the candidate thresholds (the negatives' similarities) while the bound holds
        best = 1.0
        for k, s in enumerate(served_negatives):
            # serving at threshold just above s serves the k negatives above it
            if false_hit_upper_bound(k, negatives, self.confidence) > max_false_hit_rate:
                break
            best = min(best, s + 1e-6)
        else:
            best = self.consider_threshold
        return max(self.consider_threshold, min(1.0, best))

    def fit(self) -> GlobalPrior:
        if not self._sims:
            raise ValueError("no labelled pairs")
        xs = [s for s, e in zip(self._sims, self._eligible) if e and s >= self.consider_threshold]
        ys = [y for s, y, e in zip(self._sims, self._labels, self._eligible)
              if e and s >= self.consider_threshold]
        a, b = _fit_logistic(xs, ys, self.l2)
        return GlobalPrior(a, b, self.threshold_for(self.max_false_hit_rate),
                           self.max_false_hit_rate, self.offset_sd)


def _fit_logistic(xs: Sequence[float], ys: Sequence[bool], l2: float) -> tuple[float, float]:
    """Newton's method on a 2-parameter logistic regression, centred for stability."""
    if not xs:
        return -40.0, 50.0  # no data: a steep curve centred at 0.8
    mean = sum(xs) / len(xs)
    a, b = 0.0, 0.0
    for _ in range(50):
        g0 = g1 = h00 = h01 = h11 = 0.0
        for x, y in zip(xs, ys):
            xc = x - mean
            p = _sigmoid(a + b * xc)
            r = (1.0 if y else 0.0) - p
            w = p * (1 - p)
            g0 += r
            g1 += r * xc
            h00 += w
            h01 += w * xc
            h11 += w * xc * xc
        g0 -= l2 * a
        g1 -= l2 * b
        h00 += l2
        h11 += l2
        det = h00 * h11 - h01 * h01
        if det <= 0:
            break
        da = (h11 * g0 - h01 * g1) / det
        db = (h00 * g1 - h01 * g0) / det
        a, b = a + da, b + db
        if abs(da) + abs(db) < 1e-9:
            break
    return a - b * mean, max(b, 1e-3)


def fit_offset(evidence: Evidence, prior: GlobalPrior, iterations: int = 8) -> float:
    """MAP logit offset `u` of this neighbourhood against the global curve (0 without evidence)."""
    if not evidence.observations:
        return 0.0
    precision = 1.0 / (prior.offset_sd ** 2)
    u = 0.0
    for _ in range(iterations):
        grad = -precision * u
        hess = precision
        for o in evidence.observations:
            p = prior.probability(o.similarity, u)
            grad += o.weight * ((1.0 if o.correct else 0.0) - p)
            hess += o.weight * p * (1 - p)
        step = grad / hess
        u += step
        if abs(step) < 1e-6:
            break
    return u


@dataclass(frozen=True, slots=True)
class Decision:
    """serve: whether to answer from the candidate; threshold: the entry's threshold used.

    reason: "below_consider" (under the consider threshold), "global" (no evidence: the
    global threshold), "calibrated" (threshold moved by evidence).
    """

    serve: bool
    threshold: float
    reason: str
    offset: float = 0.0
    evidence_weight: float = 0.0


def decide(evidence: Evidence, similarity: float, prior: GlobalPrior, *,
           consider_threshold: float) -> Decision:
    """Serve a verified candidate at `similarity` given its neighbourhood's evidence?

    The threshold never goes below `consider_threshold` nor above 1; without evidence it
    is the prior's global threshold.
    """
    if similarity < consider_threshold:
        return Decision(False, max(consider_threshold, prior.threshold), "below_consider")
    if not evidence.observations:
        threshold = max(consider_threshold, prior.threshold)
        return Decision(similarity >= threshold, threshold, "global")
    u = fit_offset(evidence, prior)
    threshold = min(1.0, max(consider_threshold, prior.threshold - u / prior.b))
    return Decision(similarity >= threshold, threshold, "calibrated", u, evidence.weight)
