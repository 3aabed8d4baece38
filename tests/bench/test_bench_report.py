"""Scoring and report writing on a tiny synthetic set of records."""
from __future__ import annotations

import json

from bench import scoring
from bench.driver import Record
from bench.report import write_all


def rec(target, index, group, status="", answer="", latency=0.1, expect=None, measure=True, layer="",
        stream=False, ttft=None, tokens=10, phase="probe") -> Record:
    return Record(target=target, phase=phase, index=index, group=group, expect=expect, kind="k", measure=measure,
                  stream=stream, t_start=index * 0.1, latency_s=latency, ttft_s=ttft, status_code=200,
                  cache_status=status, layer=layer, answer=answer, prompt_tokens=5, completion_tokens=tokens)


def synthetic() -> tuple[list[Record], list[Record]]:
    # Step 0 seeds group g0 (answer A0); 1 asks g0 again; 2 asks g1 (answer A2 from the
    # backend); 3 asks g3, whose own answer is A3, but the cache serves A0: a false hit.
    direct = [rec("direct", 0, "g0", answer="A0", latency=1.0, phase="seed", measure=False),
              rec("direct", 1, "g0", answer="A0", latency=1.0, expect="same"),
              rec("direct", 2, "g1", answer="A2", latency=1.0, stream=True, ttft=0.5),
              rec("direct", 3, "g3", answer="A3", latency=1.0, expect="different")]
    ours = [rec("stratacache", 0, "g0", "MISS", "A0", 1.1, phase="seed", measure=False),
            rec("stratacache", 1, "g0", "HIT", "A0", 0.01, expect="same", layer="L1"),
            rec("stratacache", 2, "g1", "MISS", "A2", 1.1, stream=True, ttft=0.6),
            rec("stratacache", 3, "g3", "HIT", "A0", 0.02, expect="different", layer="L3")]
    return direct, ours


def test_judging_true_and_false_hits():
    direct, ours = synthetic()
    groups = scoring.answer_groups(direct + ours)
    assert groups["A0"] == {"g0"}
    assert [scoring.judge(r, groups) for r in ours] == [None, "true", None, "false"]
    unknown = rec("stratacache", 9, "g9", "HIT", "never-seen")
    assert scoring.judge(unknown, groups) == "unjudged"


def test_summary_figures():
    direct, ours = synthetic()
    groups = scoring.answer_groups(direct + ours)
    s = scoring.summarize(ours, groups, nominal_ttft_ms=500, nominal_tokens_per_s=40,
                          phase_walls={"seed": 1.0, "probe": 1.0}, direct_latency={r.index: r.latency_s for r in direct})
    m = s["measured"]
    assert (m["requests"], m["hits"], m["hit_rate"]) == (3, 2, round(2 / 3, 5))
    assert m["by_layer"] == {"L1": 1, "L3": 1}
    assert (m["true_hits"], m["false_hits"], m["false_hits_on_different"], m["expected_different"]) == (1, 1, 1, 1)
    assert m["false_hit_rate"] == round(1 / 3, 5)
    assert m["recall_on_same"] == 1.0
    assert s["latency"]["hit"]["n"] == 2 and s["latency"]["miss"]["n"] == 2
    assert s["ttft"]["miss"]["p50_ms"] == 600.0
    b = s["backend"]
    assert b["requests"] == 2 and b["tokens"] == 30 and b["tokens_saved"] == 30
    # two hits of 10 tokens: 2 * (0.5 s + 10 / 40 s)
    assert b["seconds_saved_nominal"] == 1.5
    assert b["seconds_saved_measured"] == round((1.0 - 0.01) + (1.0 - 0.02), 2)
    assert s["throughput"]["rps"] == 2.0


def test_write_all_writes_every_file(tmp_path):
    direct, ours = synthetic()
    groups = scoring.answer_groups(direct + ours)
    kw = dict(nominal_ttft_ms=500, nominal_tokens_per_s=40, phase_walls={"seed": 1.0, "probe": 1.0})
    t_direct = scoring.summarize(direct, groups, **kw)
    t_ours = scoring.summarize(ours, groups, **kw)
    results = {"scenario": {"name": "tiny", "description": "synthetic", "concurrency": 2,
                            "backend": {"ttft_ms": 1, "tokens_per_s": 1}, "nominal": {"ttft_ms": 500, "tokens_per_s": 40}},
               "workload": {"kind": "pairs", "summary": "4 requests"},
               "targets": {"direct": t_direct, "stratacache": t_ours},
               "comparison": {"stratacache": scoring.comparison(t_ours, t_direct, 750.0)},
               "timelines": {"stratacache": scoring.timeline(ours, 1.0)},
               "headline": ["stratacache: hit rate 66.7%"]}
    files = write_all(tmp_path, results, direct + ours)
    for f in files:
        assert f.exists() and f.stat().st_size > 0, f
    names = {f.name for f in files}
    assert {"results.json", "records.jsonl", "report.md", "hit_rate_by_layer.png", "latency_cdf.png",
            "ttft_cdf.png", "throughput.png", "backend_saved.png"} <= names
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["targets"]["stratacache"]["measured"]["hit_rate"] == round(2 / 3, 5)
    assert saved["comparison"]["stratacache"]["hit_p50_over_direct_p50"] == round(15.0 / 1000.0, 4)
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 8
    md = (tmp_path / "report.md").read_text()
    assert "| stratacache | 3 | 0 | 66.7% | 1 | 0 | 1 |" in md
    assert "![latency_cdf.png](latency_cdf.png)" in md
