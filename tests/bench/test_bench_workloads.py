"""Workload generators: phase order, labels, Zipf skew and mix proportions, bursts."""
from __future__ import annotations

from collections import Counter

import pytest

from bench.datasets import Conversation, Pair, load_pairs
from bench.workloads import bursts, exact_repeats, labelled_pairs, multi_turn, zipf_mix, zipf_ranks


def _text(step) -> str:
    return step.body["messages"][-1]["content"]


def test_labelled_pairs_seed_every_a_before_any_b():
    pairs = [Pair(f"a{i}", f"b{i}", i % 2) for i in range(50)]
    seed, probe = labelled_pairs(pairs, limit=20, stream=0.5, seed=1)
    assert (seed.name, seed.measure, probe.name, probe.measure) == ("seed", False, "probe", True)
    assert len(seed.steps) == len(probe.steps) == 20
    seeded = {_text(s) for s in seed.steps}
    # Every probe's partner was seeded; same-labelled probes share the seed's group,
    # different-labelled ones do not.
    by_group = {s.group: _text(s) for s in seed.steps}
    for p in probe.steps:
        i = int(_text(p)[1:])
        assert f"a{i}" in seeded
        if i % 2:
            assert p.expect == "same" and by_group[p.group] == f"a{i}"
        else:
            assert p.expect == "different" and p.group not in by_group


def test_labelled_pairs_are_deterministic_and_sampled():
    pairs = [Pair(f"a{i}", f"b{i}", 1) for i in range(100)]
    one = labelled_pairs(pairs, limit=10, stream=0.5, seed=3)
    two = labelled_pairs(pairs, limit=10, stream=0.5, seed=3)
    assert [s.body for p in one for s in p.steps] == [s.body for p in two for s in p.steps]
    assert len({_text(s) for s in one[0].steps}) == 10


def test_stream_share_and_usage_option():
    phases = exact_repeats(prompts=10, count=400, stream=0.25, seed=2)
    steps = [s for p in phases for s in p.steps]
    share = sum(s.stream for s in steps) / len(steps)
    assert 0.18 < share < 0.32
    assert all(s.body["stream_options"] == {"include_usage": True} for s in steps if s.stream)
    assert all("stream" not in s.body for s in steps if not s.stream)


def test_exact_repeats_only_repeat_seeded_prompts():
    seed, rep = exact_repeats(prompts=7, count=50, stream=0, seed=1)
    assert len({_text(s) for s in seed.steps}) == 7
    assert {_text(s) for s in rep.steps} <= {_text(s) for s in seed.steps}
    assert all(s.expect == "same" for s in rep.steps)


def test_zipf_ranks_are_skewed_toward_rank_zero():
    import random

    counts = Counter(zipf_ranks(50, 20000, 1.1, random.Random(0)))
    assert counts[0] > counts[1] > counts[5] > counts[40]
    # P(0)/P(1) = 2^1.1 ~ 2.14
    assert 1.8 < counts[0] / counts[1] < 2.5


def test_zipf_mix_follows_the_configured_mix():
    mix = {"repeat": 0.5, "paraphrase": 0.3, "novel": 0.2}
    (phase,) = zipf_mix(topics=20, count=2000, s=1.0, mix=mix, stream=0, seed=5,
                        variants=[[f"t{k}", f"t{k} reworded", f"t{k} again"] for k in range(20)],
                        novel=[f"new {i}" for i in range(5000)])
    kinds = Counter(s.kind for s in phase.steps)
    for k, share in mix.items():
        assert abs(kinds[k] / 2000 - share) < 0.04, kinds
    # Novel questions are never repeated and are expected to miss; repeats use the
    # first wording, paraphrases another one of the same topic.
    novel = [s for s in phase.steps if s.kind == "novel"]
    assert len({_text(s) for s in novel}) == len(novel)
    assert all(s.expect == "different" for s in novel)
    for s in phase.steps:
        if s.kind == "repeat":
            assert _text(s) == f"t{s.group[1:]}"
        elif s.kind == "paraphrase":
            assert _text(s).startswith(f"t{s.group[1:]} ") and _text(s) != f"t{s.group[1:]}"


def test_zipf_mix_first_sight_expects_nothing_later_expects_same():
    (phase,) = zipf_mix(topics=10, count=300, s=1.2, mix={"repeat": 1.0}, stream=0, seed=1)
    seen = set()
    for s in phase.steps:
        assert s.expect == ("same" if s.group in seen else None)
        seen.add(s.group)


def test_zipf_mix_rejects_unknown_kinds():
    with pytest.raises(ValueError):
        zipf_mix(topics=5, count=10, s=1, mix={"typo": 1.0}, stream=0, seed=1)


def test_multi_turn_probes_and_context():
    convs = [Conversation(f"first {i}", f"answer {i}", f"follow {i}", f"first {i} reworded", f"follow {i} reworded")
             for i in range(6)]
    convs.append(convs[0])  # data files repeat conversations
    seed, probe = multi_turn(convs, ["Expand on that?", "Any examples?"], limit=None, stream=0, seed=1)
    assert len(seed.steps) == 3 * 6
    kinds = Counter(s.kind for s in probe.steps)
    assert kinds == {"first-reworded": 6, "follow-up-reworded": 6, "generic-other-context": 6, "follow-up-alone": 6}
    seeded = {repr(s.body["messages"]) for s in seed.steps}
    for p in probe.steps:
        assert repr(p.body["messages"]) not in seeded
        if p.kind == "generic-other-context":
            # the follow-up text was seeded, but under another conversation
            assert p.expect == "different"
            assert any(_text(s) == _text(p) for s in seed.steps)
            assert p.body["messages"][0]["content"] != next(
                s.body["messages"][0]["content"] for s in seed.steps if _text(s) == _text(p))
        if p.kind == "follow-up-reworded":
            assert p.expect == "same" and p.body["messages"][1]["role"] == "assistant"


def test_bursts_are_identical_and_concurrent():
    phases = bursts(count=3, size=10, stream=0.5, seed=1)
    assert [p.name for p in phases] == ["burst-0", "burst-1", "burst-2", "after"]
    for p in phases[:3]:
        assert p.concurrency == 10
        assert len({_text(s) for s in p.steps}) == 1
    assert len({_text(p.steps[0]) for p in phases[:3]}) == 3
    assert all(s.expect == "same" for s in phases[-1].steps)


def test_load_pairs_csv_and_jsonl(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text('question1,question2,is_duplicate\n"A, with comma",B,1\nC,D,0\n,E,1\n')
    assert load_pairs(csv) == [Pair("A, with comma", "B", 1), Pair("C", "D", 0)]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"a": "x", "b": "y", "label": 1}\n\n{"a": "z", "b": "w", "label": "0"}\n')
    assert load_pairs(jl) == [Pair("x", "y", 1), Pair("z", "w", 0)]
