"""L2 and L3 through the proxy, with the real embedding model, real FAISS and real Redis."""
from __future__ import annotations

import itertools
import time

import httpx
import pytest

from tests.conftest import eventually
from tests.proxy.conftest import SEMANTIC_ON


def ask(url, content, key="tenant-a", model="sim", system=None, history=(), **extra):
    msgs = ([{"role": "system", "content": system}] if system else []) + list(history) + [
        {"role": "user", "content": content}]
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": model, "messages": msgs, "max_tokens": 12, "temperature": 0, **extra})
    r.raise_for_status()
    h = r.headers
    return h["x-cache-status"], h.get("x-cache-layer"), h.get("x-cache-similarity"), \
        r.json()["choices"][0]["message"]["content"], h.get("x-cache-verdict")


@pytest.fixture
def proxy(make_proxy, backend_url, embedder, redis_url):
    with make_proxy(backend_url, embedder=embedder, semantic=SEMANTIC_ON, redis={"url": redis_url}) as url:
        yield url


def test_paraphrase_is_an_l3_hit_with_the_seeded_answer(proxy):
    seed = ask(proxy, "What is the capital of France?")
    para = ask(proxy, "What's the capital city of France?")
    assert seed[0] == "MISS"
    assert para[:2] == ("HIT", "L3")
    assert 0.9 <= float(para[2]) <= 1.0 and len(para[2].split(".")[1]) == 4
    assert para[3] == seed[3]


def test_a_different_question_is_a_miss(proxy):
    ask(proxy, "What is the capital of France?")
    assert ask(proxy, "What is the capital of Germany?")[0] == "MISS"
    assert ask(proxy, "How do I bake sourdough bread?")[0] == "MISS"


@pytest.mark.parametrize("query, reason", [
    ("Is the pharmacy closed on public holidays?", {"polarity", "negation"}),
    ("Is the pharmacy not open on public holidays?", {"negation", "polarity"}),
    ("Is the pharmacy open on public holidays in 2025?", {"number", "date"}),
])
def test_swaps_of_a_cached_question_are_vetoed_with_a_reason(proxy, query, reason):
    ask(proxy, "Is the pharmacy open on public holidays?")
    status, _, _, _, verdict = ask(proxy, query)
    assert status == "MISS"
    assert verdict in reason


def test_no_semantic_hit_across_tenants_models_or_parameters(proxy):
    ask(proxy, "What is the capital of France?")
    assert ask(proxy, "What's the capital city of France?", key="tenant-b")[0] == "MISS"
    assert ask(proxy, "What's the capital city of France?", model="sim-2")[0] == "MISS"
    assert ask(proxy, "What's the capital city of France?", max_tokens=13)[0] == "MISS"


def test_conversation_context_must_match(proxy):
    cal = [{"role": "user", "content": "Create an event called standup on Monday"},
           {"role": "assistant", "content": "Done: standup on Monday."}]
    acc = [{"role": "user", "content": "Create a user account for Bob"},
           {"role": "assistant", "content": "Account bob created."}]
    ask(proxy, "Can you expand on that?", history=cal)
    assert ask(proxy, "Can you expand on that?", history=acc)[0] == "MISS"
    assert ask(proxy, "Could you expand on that?", history=cal)[:2] == ("HIT", "L3")
    assert ask(proxy, "Can you expand on that?", system="You are terse.", history=cal)[0] == "MISS"


CONTEXT = " ".join([
    "The Treaty of Westphalia ended the Thirty Years' War in 1648 and reshaped the political map of Europe.",
    "Historians often credit it with the modern idea of state sovereignty.",
    "It was negotiated over several years in the cities of Osnabrueck and Muenster.",
] * 6)


def test_a_shared_context_does_not_make_different_questions_alike(proxy):
    """Text the requests share (retrieved context, a template) pulls their embeddings
    together: here past the model's 256 tokens, so the questions are not even embedded."""
    seed = ask(proxy, f"Context: {CONTEXT}\n\nQuestion: When was the treaty signed?")
    status, _, similarity, _, verdict = ask(proxy, f"Context: {CONTEXT}\n\nQuestion: Which war did the treaty end?")
    assert status == "MISS" and verdict == "shared-context"
    assert float(similarity) > 0.99  # the whole texts look the same to the embedding
    para = ask(proxy, f"Context: {CONTEXT}\n\nQuestion: When was the treaty signed ?")
    assert para[:2] == ("HIT", "L3") and para[3] == seed[3], para


def test_second_process_gets_l2_and_l3_hits_and_a_restart_rebuilds_the_index(make_proxy, backend_url, embedder,
                                                                                redis_url):
    kw = dict(embedder=embedder, semantic=SEMANTIC_ON, redis={"url": redis_url})
    with make_proxy(backend_url, **kw) as a, make_proxy(backend_url, **kw) as b:
        seed = ask(a, "How do tides work?")
        assert ask(b, "How do tides work?")[:2] == ("HIT", "L2")
        # b follows a's index through the Redis stream
        r = eventually(lambda: (got := ask(b, "How do the tides work?"))[0] == "HIT" and got,
                       what="b's index following a's")
        assert r[1] in ("L3", "L1") and r[3] == seed[3]
    with make_proxy(backend_url, **kw) as restarted:
        got = ask(restarted, "Explain how tides work")
        assert got[:2] == ("HIT", "L3") and got[3] == seed[3]


def test_expired_entries_are_not_served_by_l3(make_proxy, backend_url, embedder, redis_url):
    from tests.conftest import FakeClock

    clock = FakeClock(time.time())
    with make_proxy(backend_url, embedder=embedder, semantic=SEMANTIC_ON, redis={"url": redis_url}, clock=clock,
                    ttl={"default_s": 10, "grace_s": 0}) as url:
        ask(url, "What is the capital of France?")
        clock.advance(11)
        assert ask(url, "What's the capital city of France?")[0] == "MISS"


class SlowEmbedder:
    """Wraps the real embedder, but never answers within its deadline."""

    model_name = "slow"

    def __init__(self, inner):
        self.dim = inner.dim

    async def embed(self, texts):
        raise TimeoutError("embedder deadline passed")

    async def aclose(self):
        pass


def test_a_slow_embedder_is_a_miss_not_a_failure(make_proxy, backend_url, embedder):
    with make_proxy(backend_url, embedder=SlowEmbedder(embedder), semantic=SEMANTIC_ON) as url:
        assert ask(url, "What is the capital of France?")[0] == "MISS"
        assert ask(url, "What is the capital of France?")[:2] == ("HIT", "L1")
        assert ask(url, "What's the capital city of France?")[0] == "MISS"
        m = httpx.get(url + "/metrics").text
        assert 'stratacache_dependency_errors_total{dependency="embedder",op="embed"}' in m


def test_ban_by_meaning_across_replicas(make_proxy, backend_url, embedder, redis_url):
    from tests.conftest import FakeClock

    clock = FakeClock(time.time())
    kw = dict(embedder=embedder, semantic=SEMANTIC_ON, redis={"url": redis_url}, admin_token="adm", clock=clock)
    q = "How long does shipping to Canada take?"
    with make_proxy(backend_url, **kw) as a, make_proxy(backend_url, **kw) as b:
        ask(a, q)
        ask(a, "What is the refund policy for shoes?")
        assert ask(b, q)[0] == "HIT"  # now in both replicas' L1
        clock.advance(100)
        r = httpx.post(b + "/admin/invalidate", headers={"Authorization": "Bearer adm"},
                       json={"similar_to": "shipping time to Canada", "min_similarity": 0.7})
        assert r.status_code == 200 and r.json()["invalidated"] == 1
        assert ask(a, q)[0] == "MISS"  # gone from a's L1, from L2 and from the index
        assert ask(b, q)[0] == "MISS"  # b answers anew too, though a stored a fresh copy
        h = httpx.post(b + "/v1/chat/completions", headers={"Authorization": "Bearer tenant-a"}, timeout=60,
                       json={"model": "sim", "messages": [{"role": "user", "content": q}], "max_tokens": 12,
                             "temperature": 0}).headers
        assert h["x-cache-status"] == "HIT" and int(h["age"]) < 100  # never the 100-second-old entry
        assert ask(b, "What is the refund policy for shoes?")[0] == "HIT"


async def test_vectors_of_expired_entries_are_swept_from_redis(embedder, redis_url, tmp_path):
    import redis.asyncio as aioredis

    from proxy.services import build_services
    from proxy.settings import load_settings
    from tests.conftest import FakeClock

    clock = FakeClock(time.time())
    s = load_settings(None, {"upstream": "http://127.0.0.1:9", "semantic": SEMANTIC_ON, "redis": {"url": redis_url},
                             "state_dir": str(tmp_path), "ttl": {"default_s": 10, "grace_s": 0}})
    svc = await build_services(s, clock=clock, embedder=embedder)
    try:
        from cache.entry import Entry, EntryMeta

        stage = svc.cache.semantic
        for i, live in enumerate((True, False)):
            e = Entry(b"{}", (), None, clock.now, 1000 if live else 10, 0,
                      EntryMeta("t", "", "chat", "m", "p", semantic_text=f"question {i}"))
            await svc.cache.commit(f"k{i}", e, None)
        r = aioredis.Redis.from_url(redis_url)
        assert await r.hlen("{sc:l3}vec") == 2
        await r.delete("sc:e:k1")  # what Redis does when the entry's expiry passes
        assert await stage.sweep_orphans(svc.cache) == 1
        assert await r.hlen("{sc:l3}vec") == 1 and "k0" in stage.index and "k1" not in stage.index
        await r.aclose()
    finally:
        await svc.aclose()


def test_l3_sharing_survives_a_sentinel_failover(make_proxy, backend_url, embedder, sentinel_group):
    """Two replicas on a redis+sentinel:// URL: after the master fails over, an answer stored
    by one is still found by meaning on the other (its vector reaches it through the stream
    on the new master), and a restarted replica rebuilds its index from the new master."""
    import redis

    kw = dict(embedder=embedder, semantic=SEMANTIC_ON,
              redis={"url": sentinel_group.url, "timeout_s": 0.3, "breaker_reset_s": 0.3})
    with make_proxy(backend_url, **kw) as a, make_proxy(backend_url, **kw) as b:
        ask(a, "How do volcanoes erupt?")
        old_port = sentinel_group.master_port()
        new_port = sentinel_group.failover()
        with redis.Redis(port=old_port) as old:  # until demoted, the old master still takes writes
            eventually(lambda: old.execute_command("ROLE")[0] == b"slave", 15, "old master demoted")
        # stored after the failover; a paraphrase on the other replica, until its index has it
        assert ask(a, "How do solar panels work?")[0] == "MISS"
        # each try a new paraphrase: one that misses is stored, and would be an L1 hit next time
        tries = itertools.cycle(f"{lead}how does a solar panel work?" for lead in (
            "", "Hi, ", "Hello, ", "Hey, ", "Quick question: ", "So, ", "Please tell me ", "Can you tell me ",
            "I wonder ", "Tell me ", "Explain ", "Help me understand "))
        got = eventually(lambda: (r := ask(b, next(tries)))[1] == "L3" and r, 20,
                         "b finding a's post-failover answer by meaning", interval=0.5)
        assert got[0] == "HIT"
        with redis.Redis(port=new_port) as new:
            assert new.execute_command("ROLE")[0] == b"master"
    with make_proxy(backend_url, **kw) as restarted:
        assert ask(restarted, "What makes a volcano erupt?")[:2] == ("HIT", "L3")


def test_replicas_on_a_redis_cluster_share_l2_l3_and_invalidations(make_proxy, backend_url, embedder, redis_cluster):
    """Two replicas on a redis+cluster:// URL (three masters): an answer one stored is an L2
    hit on the other, found by meaning there (its vector reaches it through the stream), and
    a ban published through one replica takes effect on both."""
    redis_cluster.flush()
    admin = {"Authorization": "Bearer adm1n"}
    kw = dict(embedder=embedder, semantic=SEMANTIC_ON, admin_token="adm1n",
              redis={"url": redis_cluster.url, "timeout_s": 0.3})
    with make_proxy(backend_url, **kw) as a, make_proxy(backend_url, **kw) as b:
        first = ask(a, "What is the capital of France?")
        assert first[0] == "MISS"
        assert ask(b, "What is the capital of France?")[:2] == ("HIT", "L2")
        para = eventually(lambda: (r := ask(b, "What's the capital city of France?"))[1] == "L3" and r, 10,
                          "b finding a's answer by meaning")
        assert para[3] == first[3]
        stats = httpx.get(a + "/admin/stats", headers=admin, timeout=30).json()
        assert stats["layers"]["L2"]["entries"] >= 1, stats
        r = httpx.post(b + "/admin/invalidate", json={"all": True}, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        assert ask(a, "What is the capital of France?")[0] == "MISS"
    with make_proxy(backend_url, **kw) as restarted:  # rebuilds its index from the cluster
        assert ask(restarted, "What's the capital city of France?")[:2] == ("HIT", "L3")
