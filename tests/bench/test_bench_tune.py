"""Threshold recommendation on synthetic (similarity, label) sets."""
from __future__ import annotations

import numpy as np
import yaml

from bench.tune import operating_point, recommend, sweep, write_threshold


def test_sweep_counts_at_each_distinct_similarity():
    sim = np.array([0.9, 0.9, 0.8, 0.7, 0.6])
    lab = np.array([1, 0, 1, 0, 1])
    sw = sweep(sim, lab)
    assert list(sw.thresholds) == [0.9, 0.8, 0.7, 0.6]
    assert list(sw.true_hits) == [1, 2, 2, 3]
    assert list(sw.false_hits) == [1, 1, 2, 2]
    assert (sw.positives, sw.negatives) == (3, 2)


def test_recommend_takes_the_most_hits_within_the_target():
    # 10 negatives: one at 0.95, one at 0.85, the rest low; positives spread out.
    sim = np.array([0.99, 0.97, 0.95, 0.93, 0.91, 0.89, 0.87, 0.85, 0.83, 0.5,  # labels below
                    0.4, 0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    lab = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1, 1,
                    0, 0, 0, 0, 0, 0, 0, 0])
    # At most 10% of negatives served: one false hit allowed -> threshold 0.87
    # (0.85 would serve the second negative).
    rec = recommend(sim, lab, 0.1)
    assert rec.threshold == 0.87
    assert (rec.true_hits, rec.false_hits, rec.served) == (6, 1, 7)
    assert rec.false_hit_rate <= 0.1
    assert abs(rec.recall - 6 / 8) < 1e-9 and abs(rec.precision - 6 / 7) < 1e-9
    # Zero false hits allowed -> just above the first negative.
    rec0 = recommend(sim, lab, 0.0)
    assert rec0.threshold == 0.97 and rec0.false_hits == 0 and rec0.true_hits == 2


def test_recommend_rounds_up_and_still_meets_the_target():
    rng = np.random.default_rng(0)
    sim = np.concatenate([rng.uniform(0.7, 1.0, 500), rng.uniform(0.3, 0.95, 1500)])
    lab = np.concatenate([np.ones(500), np.zeros(1500)])
    for target in (0.0, 0.005, 0.01, 0.05):
        rec = recommend(sim, lab, target)
        assert rec.false_hit_rate <= target
        assert round(rec.threshold, 4) == rec.threshold
        # Any lower threshold on the 1e-4 grid breaks the target or serves no more.
        lower = operating_point(sim, lab, rec.threshold - 1e-4)
        assert lower.false_hit_rate > target or lower.true_hits == rec.true_hits


def test_recommend_uses_the_verifier_mask():
    sim = np.array([0.99, 0.98, 0.97, 0.96])
    lab = np.array([1, 0, 1, 0])
    assert recommend(sim, lab, 0.0).threshold == 0.99
    accepted = np.array([True, False, True, False])  # the verifier vetoes both negatives
    rec = recommend(sim, lab, 0.0, accepted)
    assert rec.threshold == 0.97 and rec.true_hits == 2 and rec.false_hits == 0


def test_recommend_none_when_nothing_fits():
    assert recommend(np.array([0.9, 0.8]), np.array([0, 1]), 0.0) is None


def test_write_threshold_keeps_other_settings(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 9090\nsemantic:\n  verify: true\n  consider_threshold: 0.95\n")
    write_threshold(cfg, 0.9123)
    data = yaml.safe_load(cfg.read_text())
    assert data["port"] == 9090
    assert data["semantic"] == {"verify": True, "consider_threshold": 0.9123, "threshold": 0.9123}
    fresh = tmp_path / "new" / "c.yaml"
    write_threshold(fresh, 0.88)
    assert yaml.safe_load(fresh.read_text()) == {"semantic": {"threshold": 0.88}}
