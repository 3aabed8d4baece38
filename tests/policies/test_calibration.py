"""Per-entry calibrated thresholds: move with evidence, respect the bound, round-trip."""
from __future__ import annotations

import json
import random

import pytest

from policies.calibration import (
    DEFAULT_CAPACITY, Evidence, GlobalCalibrator, GlobalPrior, decide, false_hit_upper_bound, fit_offset,
)

PRIOR = GlobalPrior(a=-30.0, b=34.0, threshold=0.94, max_false_hit_rate=0.02, offset_sd=2.0)
CONSIDER = 0.80


def evidence(*obs: tuple[float, bool]) -> Evidence:
    e = Evidence()
    for s, y in obs:
        e = e.add(s, y)
    return e


def test_no_evidence_falls_back_to_global_threshold() -> None:
    d = decide(Evidence(), 0.95, PRIOR, consider_threshold=CONSIDER)
    assert (d.serve, d.threshold, d.reason) == (True, 0.94, "global")
    d = decide(Evidence(), 0.93, PRIOR, consider_threshold=CONSIDER)
    assert (d.serve, d.reason) == (False, "global")


def test_below_consider_is_never_served() -> None:
    good = evidence(*[(0.85, True)] * 30)
    d = decide(good, 0.79, PRIOR, consider_threshold=CONSIDER)
    assert (d.serve, d.reason) == (False, "below_consider")


def test_bad_evidence_tightens() -> None:
    bad = evidence((0.96, False), (0.97, False), (0.95, False), (0.98, True))
    d = decide(bad, 0.955, PRIOR, consider_threshold=CONSIDER)
    assert d.reason == "calibrated" and d.offset < 0
    assert d.threshold > PRIOR.threshold
    assert not d.serve  # served without evidence, refused here


def test_good_evidence_loosens() -> None:
    good = evidence(*[(0.88 + 0.005 * k, True) for k in range(10)])
    d = decide(good, 0.92, PRIOR, consider_threshold=CONSIDER)
    assert d.offset > 0 and d.threshold < PRIOR.threshold
    assert d.serve  # refused without evidence, served here


def test_more_evidence_moves_further() -> None:
    few = evidence(*[(0.9, True)] * 2)
    many = evidence(*[(0.9, True)] * 20)
    t_few = decide(few, 0.9, PRIOR, consider_threshold=CONSIDER).threshold
    t_many = decide(many, 0.9, PRIOR, consider_threshold=CONSIDER).threshold
    assert t_many < t_few < PRIOR.threshold


def test_threshold_stays_within_consider_and_one() -> None:
    great = evidence(*[(0.81, True)] * 32)
    awful = evidence(*[(0.999, False)] * 32)
    assert decide(great, 0.85, PRIOR, consider_threshold=CONSIDER).threshold >= CONSIDER
    assert decide(awful, 0.9999, PRIOR, consider_threshold=CONSIDER).threshold <= 1.0


def test_evidence_consistent_with_the_curve_barely_moves() -> None:
    rng = random.Random(7)
    obs = []
    for _ in range(32):
        s = rng.uniform(0.85, 1.0)
        obs.append((s, rng.random() < PRIOR.probability(s)))
    u = fit_offset(evidence(*obs), PRIOR)
    assert abs(u) < 1.5


def _labelled(n: int, seed: int) -> tuple[list[float], list[int]]:
    """Synthetic pairs: positives score higher than negatives, with overlap."""
    rng = random.Random(seed)
    sims, labels = [], []
    for _ in range(n):
        y = rng.random() < 0.4
        s = min(1.0, max(0.0, rng.gauss(0.90 if y else 0.80, 0.05)))
        sims.append(s)
        labels.append(int(y))
    return sims, labels


def test_global_calibrator_respects_the_bound() -> None:
    sims, labels = _labelled(4000, 1)
    for bound in (0.01, 0.02, 0.05):
        cal = GlobalCalibrator(max_false_hit_rate=bound, consider_threshold=0.5)
        cal.add(sims, labels)
        prior = cal.fit()
        negatives = [s for s, y in zip(sims, labels) if not y]
        fhr = sum(s >= prior.threshold for s in negatives) / len(negatives)
        assert fhr <= bound
        # and it is not needlessly strict: the measured rate is close to the bound
        assert fhr > bound * 0.5
    # fresh data from the same distribution stays near the bound too
    fresh_sims, fresh_labels = _labelled(4000, 2)
    cal = GlobalCalibrator(max_false_hit_rate=0.02, consider_threshold=0.5)
    cal.add(sims, labels)
    t = cal.fit().threshold
    fresh_neg = [s for s, y in zip(fresh_sims, fresh_labels) if not y]
    assert sum(s >= t for s in fresh_neg) / len(fresh_neg) <= 0.03


def test_stricter_bound_gives_higher_threshold() -> None:
    sims, labels = _labelled(2000, 3)
    cal = GlobalCalibrator(consider_threshold=0.5)
    cal.add(sims, labels)
    assert cal.threshold_for(0.01) > cal.threshold_for(0.05)


def test_vetoed_pairs_cannot_be_served_so_the_threshold_drops() -> None:
    sims, labels = _labelled(2000, 4)
    plain = GlobalCalibrator(consider_threshold=0.5)
    plain.add(sims, labels)
    verified = GlobalCalibrator(consider_threshold=0.5)
    # a verifier that catches every other negative
    eligible = [bool(y) or k % 2 == 0 for k, y in enumerate(labels)]
    verified.add(sims, labels, eligible)
    assert verified.threshold_for(0.02) < plain.threshold_for(0.02)


def test_fitted_curve_is_increasing() -> None:
    sims, labels = _labelled(2000, 5)
    cal = GlobalCalibrator(consider_threshold=0.5)
    cal.add(sims, labels)
    prior = cal.fit()
    assert prior.b > 0
    assert prior.probability(0.95) > prior.probability(0.85)


def test_evidence_round_trip_through_json() -> None:
    e = evidence((0.91234567, True), (0.95, False), (0.99, True))
    data = json.loads(json.dumps(e.to_dict()))
    back = Evidence.from_dict(data)
    assert [(round(o.similarity, 4), o.correct) for o in back.observations] == [
        (0.9123, True), (0.95, False), (0.99, True)]
    assert back.capacity == e.capacity
    assert len(json.dumps(e.to_dict())) < 80


def test_weighted_evidence_round_trip() -> None:
    pooled = Evidence.pool([(evidence((0.9, True)), 0.5), (evidence((0.97, False)), 1.0)])
    back = Evidence.from_dict(pooled.to_dict())
    assert [o.weight for o in back.observations] == [0.5, 1.0]


@pytest.mark.parametrize("data", [None, {}, {"v": 2, "s": [0.9], "y": "1"}, {"v": 1, "s": [0.9], "y": "10"}])
def test_unknown_or_broken_dicts_give_empty_evidence(data) -> None:
    assert len(Evidence.from_dict(data)) == 0


def test_evidence_is_bounded_to_the_most_recent() -> None:
    e = Evidence()
    for k in range(DEFAULT_CAPACITY + 10):
        e = e.add(0.9, k % 2 == 0)
    assert len(e) == DEFAULT_CAPACITY
    assert e.observations[-1].correct == ((DEFAULT_CAPACITY + 9) % 2 == 0)


def test_pool_scales_and_skips_zero_weights() -> None:
    a, b = evidence((0.9, True), (0.92, True)), evidence((0.97, False))
    pooled = Evidence.pool([(a, 0.5), (b, 0.0)])
    assert len(pooled) == 2 and pooled.weight == pytest.approx(1.0)


def test_prior_round_trip() -> None:
    assert GlobalPrior.from_dict(json.loads(json.dumps(PRIOR.to_dict()))) == PRIOR


def test_upper_bound_is_above_the_rate_and_shrinks_with_data() -> None:
    assert false_hit_upper_bound(2, 100) > 0.02
    assert false_hit_upper_bound(20, 1000) < false_hit_upper_bound(2, 100)
    assert false_hit_upper_bound(0, 0) == 1.0
