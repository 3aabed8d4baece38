"""One small end-to-end `bench run`: real backend, redis-server and proxy processes."""
from __future__ import annotations

import json
import os

import pytest

from bench.cli import main
from bench.scenario import load_scenario, scenario_names

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_bundled_scenarios_load():
    names = scenario_names()
    assert {"exact-repeats", "paraphrase-qqp", "multi-turn", "zipf-mix", "burst", "fault-redis-restart",
            "peers"} <= set(names)
    for n in names:
        assert load_scenario(n).name == n


def test_exact_repeats_end_to_end(tmp_path):
    out = tmp_path / "run"
    rc = main(["run", "--scenario", "exact-repeats", "--count", "30", "--concurrency", "4", "--out", str(out),
               "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    ours, direct = results["targets"]["stratacache"], results["targets"]["direct"]
    assert ours["failed"] == direct["failed"] == 0
    assert ours["measured"]["hit_rate"] > 0
    assert ours["measured"]["false_hits"] == 0
    assert ours["backend"]["requests"] < direct["backend"]["requests"]
    assert (out / "report.md").exists() and (out / "latency_cdf.png").exists()
    procs = results["processes"]
    assert {p["name"] for p in procs} == {"backend", "redis", "proxy"}
    assert all(_gone(p["pid"]) for p in procs)
