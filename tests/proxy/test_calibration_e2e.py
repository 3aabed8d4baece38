"""Calibrated thresholds and the off-path judge through the proxy, with the real embedding
model, real FAISS and real Redis.

Similarities (all-MiniLM-L6-v2) of the paraphrases to SEED, measured here: "What's the way
to reset my password?" 0.966, "I forgot my password, how do I reset it?" 0.940, "Steps to
reset my password?" 0.928, "Password reset: how do I do it?" 0.926. The static threshold
is 0.944 and the consider threshold 0.80, so the first is served without evidence and the
others are in the grey zone.
"""
from __future__ import annotations

import asyncio
import threading

import httpx
import orjson
import pytest
import redis
from fastapi import FastAPI, Request

from policies.calibration import Evidence
from policies.judge_prompt import QUESTION
from tests.conftest import eventually
from tests.proxy.conftest import serving

SEED = "How do I reset my password?"
HIGH = "What's the way to reset my password?"
GREY = "Steps to reset my password?"
GREY_2 = "Password reset: how do I do it?"
GREY_3 = "I forgot my password, how do I reset it?"

CALIBRATED = {"enabled": True, "threshold": 0.944, "consider_threshold": 0.8, "verify": True, "calibration": True}
WAIT_S = 15.0


def ask(url, content, key="tenant-a"):
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 12,
                         "temperature": 0})
    r.raise_for_status()
    return r.headers["x-cache-status"], r.headers.get("x-cache-layer"), r.json()["choices"][0]["message"]["content"]


def metric(url, name_and_labels: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def until(cond, what: str, within: float = WAIT_S):
    return eventually(cond, within, what, interval=0.05)


def entry_keys(redis_url) -> set[str]:
    r = redis.Redis.from_url(redis_url)
    try:
        return {k.decode() for k in r.hkeys("{sc:l3}vec")}
    finally:
        r.close()


def evidence_of(redis_url, key: str) -> Evidence:
    r = redis.Redis.from_url(redis_url)
    try:
        raw = r.hget("sc:ev", key)
    finally:
        r.close()
    return Evidence.from_dict(orjson.loads(raw)) if raw else Evidence()


def put_evidence(redis_url, key: str, *obs: tuple[float, bool]) -> None:
    ev = Evidence()
    for s, y in obs:
        ev = ev.add(s, y)
    r = redis.Redis.from_url(redis_url)
    try:
        r.hset("sc:ev", key, orjson.dumps(ev.to_dict()))
    finally:
        r.close()


def seed(url, redis_url, text=SEED, key="tenant-a") -> tuple[str, str]:
    """Ask `text` once; return (its entry key, its answer)."""
    before = entry_keys(redis_url)
    status, _, answer = ask(url, text, key=key)
    assert status == "MISS"
    (new,) = until(lambda: entry_keys(redis_url) - before, "the entry's vector in Redis")
    return new, answer


# -- calibrated thresholds ---------------------------------------------------------------------

@pytest.fixture
def calibrated(make_proxy, backend_url, embedder, redis_url):
    with make_proxy(backend_url, embedder=embedder, semantic=CALIBRATED, redis={"url": redis_url}) as url:
        yield url


def test_bad_evidence_stops_a_paraphrase_that_would_be_served(calibrated, redis_url):
    control, _ = seed(calibrated, redis_url, key="tenant-b")
    assert ask(calibrated, HIGH, key="tenant-b")[:2] == ("HIT", "L3")  # no evidence: the static threshold
    key, _ = seed(calibrated, redis_url)
    put_evidence(redis_url, key, (0.97, False), (0.96, False), (0.98, False))
    assert ask(calibrated, HIGH)[0] == "MISS"
    assert metric(calibrated, 'stratacache_l3_threshold_count{outcome="miss",rule="calibrated"}') == 1
    assert metric(calibrated, 'stratacache_l3_threshold_count{outcome="hit",rule="global"}') == 1
    assert control != key


def test_good_evidence_lets_a_lower_similarity_through(calibrated, redis_url):
    seed(calibrated, redis_url, key="tenant-b")
    assert ask(calibrated, GREY_2, key="tenant-b")[0] == "MISS"  # 0.926 < 0.944
    key, answer = seed(calibrated, redis_url)
    put_evidence(redis_url, key, (0.92, True), (0.93, True), (0.91, True))
    status, layer, got = ask(calibrated, GREY_2)
    assert (status, layer, got) == ("HIT", "L3", answer)


def test_a_grey_zone_miss_is_confirmed_against_the_fresh_answer(calibrated, redis_url):
    key, _ = seed(calibrated, redis_url)
    assert ask(calibrated, GREY)[0] == "MISS"
    # the simulated backend answers each prompt with its own pseudo-random words: not the same answer
    ev = until(lambda: evidence_of(redis_url, key).observations, "a confirmation on the seed's evidence")
    assert [(round(o.similarity, 2), o.correct) for o in ev] == [(0.93, False)]
    assert metric(calibrated, 'stratacache_l3_evidence_total{outcome="wrong",source="confirmation"}') == 1


def test_an_evidence_outage_fails_open(make_proxy, backend_url, embedder, redis_url):
    with make_proxy(backend_url, embedder=embedder, semantic=CALIBRATED, redis={"url": redis_url}) as url:
        seed(url, redis_url)
        r = redis.Redis.from_url(redis_url)
        try:
            r.set("sc:ev", "not a hash")  # every evidence read now fails (WRONGTYPE)
        finally:
            r.close()
        assert ask(url, HIGH)[:2] == ("HIT", "L3")  # decided without evidence: the static threshold
        assert metric(url, 'stratacache_dependency_errors_total{dependency="evidence",op="get"}') >= 1


# -- the off-path judge --------------------------------------------------------------------------

class FakeUpstream:
    """An OpenAI-compatible upstream: answers "answer to: <text>", and judge prompts with
    yes or no by `rule(question 1, question 2)`; counts both."""

    def __init__(self, rule=lambda a, b: True) -> None:
        self.rule = rule
        self.judged: list[tuple[str, str, dict]] = []
        self.answered = 0
        self.lock = threading.Lock()
        app = self.app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            text = body["messages"][-1]["content"]
            if QUESTION in text:
                q1 = text.split("Question 1: ", 1)[1].split("\n", 1)[0]
                q2 = text.split("Question 2: ", 1)[1].split("\n", 1)[0]
                with self.lock:
                    self.judged.append((q1, q2, {"model": body["model"], "temperature": body["temperature"],
                                                 "max_tokens": body["max_tokens"],
                                                 "auth": request.headers.get("authorization")}))
                content = "Yes." if self.rule(q1, q2) else "no"
            else:
                with self.lock:
                    self.answered += 1
                content = f"answer to: {text}"
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}


@pytest.fixture
def fake_upstream():
    def make(rule=lambda a, b: True):
        fake = FakeUpstream(rule)
        return fake, serving(fake.app)

    return make


def test_judge_yes_aliases_the_pair_and_records_correct_evidence(make_proxy, fake_upstream, embedder, redis_url):
    fake, server = fake_upstream(lambda a, b: True)
    with server as up, make_proxy(up, embedder=embedder, semantic=CALIBRATED, redis={"url": redis_url},
                                  judge={"enabled": True}) as url:
        key, answer = seed(url, redis_url)
        status, _, first = ask(url, GREY)
        assert status == "MISS" and first == f"answer to: {GREY}"
        until(lambda: metric(url, "stratacache_judge_aliases_total") == 1, "the alias")
        assert ask(url, GREY) == ("HIT", "L1", answer)  # the cached answer, now under the new key
        assert [(a, b) for a, b, _ in fake.judged] == [(SEED, GREY)]
        assert fake.judged[0][2] == {"model": "m", "temperature": 0, "max_tokens": 3, "auth": "Bearer tenant-a"}
        assert [(round(o.similarity, 2), o.correct) for o in evidence_of(redis_url, key).observations] == [
            (0.93, True)]
        assert metric(url, 'stratacache_judge_total{outcome="yes"}') == 1
        # the judged evidence lowers the neighbourhood's threshold: another grey paraphrase is served
        assert ask(url, GREY_2) == ("HIT", "L3", answer)


def test_judge_no_keeps_the_miss_and_records_wrong_evidence(make_proxy, fake_upstream, embedder, redis_url):
    fake, server = fake_upstream(lambda a, b: False)
    with server as up, make_proxy(up, embedder=embedder, semantic=CALIBRATED, redis={"url": redis_url},
                                  judge={"enabled": True}) as url:
        key, answer = seed(url, redis_url)
        assert ask(url, GREY)[0] == "MISS"
        until(lambda: metric(url, 'stratacache_judge_total{outcome="no"}') == 1, "the judgement")
        assert [(round(o.similarity, 2), o.correct) for o in evidence_of(redis_url, key).observations] == [
            (0.93, False)]
        # no alias: the repeat is served its own fresh answer, never the seed's
        assert ask(url, GREY) == ("HIT", "L1", f"answer to: {GREY}")
        assert ask(url, HIGH)[0] == "MISS"  # 0.966: served without evidence, not after a "no" at 0.93
        assert metric(url, "stratacache_judge_aliases_total") == 0


def test_judge_is_off_by_default_and_sends_nothing(make_proxy, fake_upstream, embedder, redis_url):
    fake, server = fake_upstream()
    with server as up, make_proxy(up, embedder=embedder, semantic=CALIBRATED, redis={"url": redis_url}) as url:
        key, _ = seed(url, redis_url)
        assert ask(url, GREY)[0] == "MISS"
        # the grey pair is still learnt from, by confirmation ("answer to: ..." texts embed alike)
        until(lambda: evidence_of(redis_url, key).observations, "the confirmation")
        assert fake.judged == [] and fake.answered >= 2
        assert metric(url, 'stratacache_judge_total{outcome="yes"}') == 0


# -- the judge's parts, without servers ---------------------------------------------------------

@pytest.mark.parametrize("content, verdict", [
    ("yes", True), ("Yes.", True), ("**YES**", True), ("no", False), (" No, they differ", False),
    ("I think yes", None), ("maybe", None), ("", None), (None, None),
])
def test_read_verdict(content, verdict):
    from policies.judge_prompt import read_verdict

    assert read_verdict({"choices": [{"message": {"content": content}}]}) is verdict


def test_judge_body_is_short_and_greedy():
    from policies.judge_prompt import judge_body

    body = judge_body("m", "a" * 5000, "b")
    assert (body["model"], body["temperature"], body["max_tokens"], body["stream"]) == ("m", 0, 3, False)
    assert QUESTION in body["messages"][-1]["content"] and len(body["messages"][-1]["content"]) < 2300


def test_token_bucket_spaces_calls_after_the_burst():
    from proxy.judge import TokenBucket
    from tests.conftest import FakeClock

    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.5)
    assert bucket.reserve() == pytest.approx(1.0)  # reserved behind the previous one
    clock.advance(10)
    assert bucket.reserve() == 0.0  # refilled, but never past the burst
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.5)


def _judge(handler, **kw):
    from cache.tiered import GreyCandidate
    from proxy.judge import Judge, JudgeJob
    from proxy.metrics import Metrics

    metrics = Metrics()
    judge = Judge(url="http://judge.invalid", forward_credentials=False, cache=None, stage=None, metrics=metrics,
                  transport=httpx.MockTransport(handler), **kw)
    job = JudgeJob(grey=GreyCandidate("k", 0.9, "a", "b", 0.95), key="q", model="m")
    return judge, job, metrics


def _count(metrics, outcome: str) -> float:
    prefix = f'stratacache_judge_total{{outcome="{outcome}"}} '
    return next((float(line[len(prefix):]) for line in metrics.render().decode().splitlines()
                 if line.startswith(prefix)), 0.0)


async def test_judge_failures_and_unclear_answers_record_nothing():
    def handler(request: httpx.Request) -> httpx.Response:
        if b'"Question 1: a' in request.content and request.headers.get("authorization") == "Bearer sk-judge":
            return httpx.Response(200, json={"choices": [{"message": {"content": "perhaps"}}]})
        return httpx.Response(500, json={"error": {"message": "boom"}})

    judge, job, metrics = _judge(handler, api_key="sk-judge")
    assert await judge.handle(job) is None
    assert _count(metrics, "unclear") == 1
    judge.api_key = None
    assert await judge.handle(job) is None
    assert _count(metrics, "error") == 1
    await judge.aclose()


async def test_judge_queue_is_bounded_and_close_does_not_wait_for_a_judgement():
    import asyncio

    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    judge, job, metrics = _judge(hang, queue_size=1, concurrency=1, timeout_s=3600)
    judge.start()
    assert judge.submit(job) is True
    await asyncio.wait_for(started.wait(), 5)  # the worker took it and hangs on the upstream
    assert judge.submit(job) is True and judge.submit(job) is False  # one waits, the next is dropped
    assert _count(metrics, "dropped") == 1
    await asyncio.wait_for(judge.aclose(), 2)


async def test_confirmations_are_rate_limited_and_never_queue():
    from types import SimpleNamespace

    from proxy.grey_zone import GreyZone
    from proxy.judge import TokenBucket

    t = [0.0]
    b = TokenBucket(2.0, 2, clock=lambda: t[0])
    assert b.try_take() and b.try_take() and not b.try_take()  # burst spent, and no debt taken
    t[0] += 0.5
    assert b.try_take() and not b.try_take()

    release = asyncio.Event()
    started = []

    class Stage:
        def take_grey(self, partition, text):
            return SimpleNamespace(key="g")

        async def confirm(self, cache, grey, entry):
            started.append(grey)
            await release.wait()

    gz = GreyZone(cache=None, stage=Stage(), judge=None, confirm=True, confirm_rate_per_s=100.0,
                  confirm_concurrency=1)
    entry = SimpleNamespace(meta=SimpleNamespace(partition="p", semantic_text="q"))
    job = SimpleNamespace(decision=None)
    for _ in range(5):
        gz.after_commit(job, entry)
    await asyncio.sleep(0)
    assert len(started) == 1 and gz.skipped == 4  # one at a time; the rest skipped, not queued
    release.set()
    await gz.aclose()
