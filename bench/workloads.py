"""Workloads: the request sequences a scenario sends, in phases.

A workload is a list of `Phase`s run one after the other; each holds `Step`s (one chat
request each). Every step carries a `group`: steps in one group mean the same thing, so
serving one's answer for another is a true hit, and serving any other answer is a false
hit (see `bench/scoring.py`). `expect` says what a perfect cache would do with the step:
"same" (an equivalent request was sent before: a hit is possible and right), "different"
(nothing equivalent was sent: any hit is false), or None (first sight: a miss is right).

Generators are pure functions of their inputs and a seed: the same arguments give the
same requests, so the direct-to-backend baseline and every peer see identical traffic.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bench.datasets import Conversation, Pair

Expect = Literal["same", "different"] | None
MODEL = "bench-simulated"


@dataclass(frozen=True, slots=True)
class Step:
    body: dict
    group: str
    expect: Expect = None
    kind: str = "request"  # what the step is, for reports: seed, repeat, paraphrase, novel...

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def text(self) -> str:
        return str(self.body["messages"][-1]["content"])


@dataclass(slots=True)
class Phase:
    name: str
    steps: list[Step]
    measure: bool = True          # counts toward hit rate and correctness
    concurrency: int | None = None  # None: the scenario's
    rate: float | None = None     # open loop, requests per second; None: closed loop
    notes: dict = field(default_factory=dict)


def chat_body(messages: list[dict], *, stream: bool, max_tokens: int | None = None) -> dict:
    body: dict = {"model": MODEL, "messages": messages, "temperature": 0}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def user(text: str) -> dict:
    return {"role": "user", "content": text}


class _Streams:
    """Decides per request whether it streams, deterministically from the seed."""

    def __init__(self, share: float, seed: int) -> None:
        self.share = share
        self.rng = random.Random(seed ^ 0x5EED)

    def __call__(self) -> bool:
        return self.share >= 1 or (self.share > 0 and self.rng.random() < self.share)


# --------------------------------------------------------------------------- synthetic text
# Tasks and phrasings for synthetic workloads (no data file needed). A task in different
# phrasings is one meaning; two tasks are different meanings.
TASKS = [
    "bake sourdough bread at home", "reset a forgotten email password", "learn to play the guitar",
    "train for a first marathon", "grow tomatoes on a balcony", "remove a red wine stain from a carpet",
    "set up a python virtual environment", "write a cover letter for a job", "fix a leaking kitchen tap",
    "improve my credit score", "get rid of fruit flies in the kitchen", "learn spanish quickly",
    "clean a cast iron pan", "start investing in index funds", "fall asleep faster at night",
    "make cold brew coffee", "change a flat bicycle tyre", "prepare for a job interview",
    "teach a dog to sit", "reduce my electricity bill", "back up photos from a phone",
    "write unit tests in python", "speed up a slow laptop", "brew green tea properly",
    "negotiate a higher salary", "repot a houseplant", "memorise a speech", "paint a room evenly",
    "choose a good running shoe", "cook rice without a rice cooker", "make a budget spreadsheet",
    "stop procrastinating on homework", "tie a tie", "unclog a bathroom sink", "start a vegetable compost",
    "learn touch typing", "deal with jet lag", "photograph the night sky", "make fresh pasta by hand",
    "remove rust from tools", "build a birdhouse", "keep basil alive indoors", "sharpen a kitchen knife",
    "write a haiku", "calm down before an exam", "install a ceiling fan", "descale an electric kettle",
    "plan a road trip across the country", "make homemade yogurt", "clean white sneakers",
    "get better at chess", "fold a fitted sheet", "iron a dress shirt", "learn to juggle",
    "start a podcast", "wash a wool sweater", "defrost a freezer", "make a paper airplane fly far",
    "protect a lawn from moss", "learn the basics of sql", "set up two factor authentication",
    "bleed a radiator", "make sushi rice", "whiten teeth safely", "store fresh herbs",
    "prevent a cold in winter", "organise a small closet", "recover a deleted file on windows",
    "improve handwriting", "remove a splinter", "make candles at home", "train a puppy to walk on a leash",
    "replace a light switch", "season a wok", "write a short story", "grill vegetables",
    "practice mindfulness meditation", "choose a laptop for programming", "get a toddler to sleep",
    "clean a computer keyboard", "cut my own hair", "keep cut flowers fresh longer", "read faster",
    "make a smoothie without a blender", "waterproof hiking boots", "stop a door from squeaking",
    "learn to swim as an adult", "boil an egg perfectly", "charge a car battery", "write a resignation letter",
]
PHRASINGS = [
    "How do I {t}?", "What is the best way to {t}?", "How can I {t}?", "What's the easiest way to {t}?",
    "Any tips on how to {t}?", "Can you explain how to {t}?", "I want to {t}. How should I do it?",
]


def task_text(task: str, phrasing: int = 0) -> str:
    return PHRASINGS[phrasing % len(PHRASINGS)].format(t=task)


# --------------------------------------------------------------------------- generators
def exact_repeats(*, prompts: int, count: int, stream: float, seed: int,
                  max_tokens: int | None = None) -> list[Phase]:
    """`prompts` distinct requests each sent once, then `count` exact repeats of them."""
    rng = random.Random(seed)
    streams = _Streams(stream, seed)
    texts = [task_text(TASKS[i % len(TASKS)], i // len(TASKS)) for i in range(prompts)]
    seeds = [Step(chat_body([user(t)], stream=streams(), max_tokens=max_tokens), f"x{i}", None, "seed")
             for i, t in enumerate(texts)]
    repeats = []
    for _ in range(count):
        i = rng.randrange(prompts)
        repeats.append(Step(chat_body([user(texts[i])], stream=streams(), max_tokens=max_tokens),
                            f"x{i}", "same", "repeat"))
    return [Phase("seed", seeds, measure=False), Phase("repeat", repeats)]


def labelled_pairs(pairs: Sequence[Pair], *, limit: int | None, stream: float, seed: int,
                   max_tokens: int | None = None, repeats: int = 0) -> list[Phase]:
    """Seed every sampled pair's `a`, then ask every `b`: label 1 expects a hit on `a`'s
    answer, label 0 expects a miss (any hit is a false hit). `repeats` exact repeats of
    seeded `a`s are mixed into the probes (exact caches have something to hit)."""
    rng = random.Random(seed)
    idx = list(range(len(pairs)))
    if limit is not None and limit < len(idx):
        idx = sorted(rng.sample(idx, limit))
    streams = _Streams(stream, seed)
    seeds, probes = [], []
    for n, i in enumerate(idx):
        p = pairs[i]
        g = f"p{i}"
        seeds.append(Step(chat_body([user(p.a)], stream=streams(), max_tokens=max_tokens), g, None, "seed"))
        same = p.label == 1
        probes.append(Step(chat_body([user(p.b)], stream=streams(), max_tokens=max_tokens),
                           g if same else f"p{i}b", "same" if same else "different",
                           "paraphrase" if same else "different"))
    for _ in range(repeats if seeds else 0):
        s = rng.choice(seeds)
        probes.append(Step(chat_body(s.body["messages"], stream=streams(), max_tokens=max_tokens), s.group,
                           "same", "repeat"))
    rng.shuffle(probes)
    return [Phase("seed", seeds, measure=False), Phase("probe", probes)]


def multi_turn(conversations: Sequence[Conversation], followups: Sequence[str], *, limit: int | None,
               stream: float, seed: int, max_tokens: int | None = None) -> list[Phase]:
    """Seed each conversation's first turn, its follow-up in context, and a generic
    follow-up ("Can you expand on that?") in context. Then probe:

    - the first question reworded, alone: same meaning (a hit is right);
    - the follow-up reworded, in the same context: same meaning;
    - a generic follow-up seeded under another conversation, in this one: different;
    - the follow-up without its context: different (it means something else alone).
    """
    rng = random.Random(seed)
    # Data files repeat conversations: a repeat would turn a "different" probe into a
    # byte-identical copy of another conversation's seed.
    convs, seen = [], set()
    for c in conversations:
        if (c.first, c.answer) not in seen:
            seen.add((c.first, c.answer))
            convs.append(c)
    if limit is not None and limit < len(convs):
        convs = rng.sample(convs, limit)
    streams = _Streams(stream, seed)
    generic = list(followups) or ["Can you expand on that?"]

    def body(msgs: list[dict]) -> dict:
        return chat_body(msgs, stream=streams(), max_tokens=max_tokens)

    def context(c: Conversation) -> list[dict]:
        msgs = [user(c.first)]
        if c.answer:
            msgs.append({"role": "assistant", "content": c.answer})
        return msgs

    seeds, probes = [], []
    for i, c in enumerate(convs):
        g_seed = generic[i % len(generic)]
        seeds.append(Step(body([user(c.first)]), f"c{i}.first", None, "seed-first"))
        seeds.append(Step(body(context(c) + [user(c.follow_up)]), f"c{i}.follow", None, "seed-follow-up"))
        seeds.append(Step(body(context(c) + [user(g_seed)]), f"c{i}.generic", None, "seed-generic"))
        if c.first_paraphrase:
            probes.append(Step(body([user(c.first_paraphrase)]), f"c{i}.first", "same", "first-reworded"))
        if c.follow_up_paraphrase:
            probes.append(Step(body(context(c) + [user(c.follow_up_paraphrase)]), f"c{i}.follow", "same",
                               "follow-up-reworded"))
        other = generic[(i + 1) % len(generic)]
        if other != g_seed and len(convs) > 1:
            probes.append(Step(body(context(c) + [user(other)]), f"c{i}.other-generic", "different",
                               "generic-other-context"))
        probes.append(Step(body([user(c.follow_up)]), f"c{i}.follow-alone", "different",
                           "follow-up-alone"))
    # A probe identical to an earlier request (the data repeats follow-ups) would be an
    # exact hit that its label calls "different": keep the first of each.
    sent = {_messages_key(s.body) for s in seeds}
    unique = []
    for p in probes:
        k = _messages_key(p.body)
        if k not in sent:
            sent.add(k)
            unique.append(p)
    probes = unique
    rng.shuffle(probes)
    return [Phase("seed", seeds, measure=False), Phase("probe", probes)]


def _messages_key(body: dict) -> str:
    return repr(body["messages"])


def zipf_ranks(n_items: int, count: int, s: float, rng: random.Random) -> list[int]:
    """`count` draws of ranks 0..n_items-1 with P(rank k) proportional to 1/(k+1)^s."""
    weights = [1.0 / (k + 1) ** s for k in range(n_items)]
    return rng.choices(range(n_items), weights=weights, k=count)


def zipf_mix(*, topics: int, count: int, s: float, mix: dict[str, float], stream: float, seed: int,
             variants: Sequence[Sequence[str]] | None = None, novel: Sequence[str] | None = None,
             max_tokens: int | None = None, rate: float | None = None) -> list[Phase]:
    """One stream of `count` requests. Each picks a kind by `mix` ("repeat": the topic's
    first wording, "paraphrase": another wording, "novel": a question never asked before)
    and, for repeat/paraphrase, a topic by Zipf(s) over `topics` ranks.

    `variants[k]` are the wordings of topic k (first = canonical); `novel` a pool of
    unrelated questions. Both default to the synthetic TASKS x PHRASINGS."""
    rng = random.Random(seed)
    kinds = [k for k in ("repeat", "paraphrase", "novel") if mix.get(k, 0) > 0]
    unknown = set(mix) - {"repeat", "paraphrase", "novel"}
    if unknown or not kinds:
        raise ValueError(f"mix takes repeat, paraphrase, novel (got {sorted(mix)})")
    if variants is None:
        order = rng.sample(range(len(TASKS)), len(TASKS))
        variants = [[task_text(TASKS[j], p) for p in range(len(PHRASINGS))] for j in order[:topics]]
        novel = [task_text(TASKS[j], rng.randrange(len(PHRASINGS))) for j in order[topics:]]
    variants = [list(v) for v in variants[:topics]]
    pool = list(novel or [])
    rng.shuffle(pool)
    streams = _Streams(stream, seed)
    weights = [mix[k] for k in kinds]
    seen: set[int] = set()
    steps: list[Step] = []
    n_novel = 0
    for _ in range(count):
        kind = rng.choices(kinds, weights=weights)[0]
        if kind == "novel" and n_novel >= len(pool):
            kind = "repeat"  # pool exhausted: fall back rather than repeat a "novel" question
        if kind == "novel":
            text, group, expect = pool[n_novel], f"n{n_novel}", "different"
            n_novel += 1
        else:
            k = zipf_ranks(len(variants), 1, s, rng)[0]
            vs = variants[k]
            text = vs[0] if kind == "repeat" or len(vs) == 1 else vs[1 + rng.randrange(len(vs) - 1)]
            group, expect = f"z{k}", ("same" if k in seen else None)
            seen.add(k)
        steps.append(Step(chat_body([user(text)], stream=streams(), max_tokens=max_tokens), group, expect, kind))
    return [Phase("stream", steps, rate=rate)]


def bursts(*, count: int, size: int, stream: float, seed: int, max_tokens: int | None = None) -> list[Phase]:
    """`count` bursts of `size` identical requests sent at once (each burst a fresh prompt),
    then each prompt once more. A coalescing cache sends each burst upstream once."""
    rng = random.Random(seed)
    streams = _Streams(stream, seed)
    order = rng.sample(range(len(TASKS)), len(TASKS))
    phases = []
    texts = [task_text(TASKS[order[b % len(order)]], b // len(order)) + f" (burst {seed}-{b})" for b in range(count)]
    for b, t in enumerate(texts):
        steps = [Step(chat_body([user(t)], stream=streams(), max_tokens=max_tokens), f"b{b}", None, "burst")
                 for _ in range(size)]
        phases.append(Phase(f"burst-{b}", steps, concurrency=size, notes={"burst": b}))
    after = [Step(chat_body([user(t)], stream=streams(), max_tokens=max_tokens), f"b{b}", "same", "after")
             for b, t in enumerate(texts)]
    phases.append(Phase("after", after))
    return phases
