"""Pure policies: keys and partitions, Cache-Control, freshness, rules, cacheability."""
from __future__ import annotations

import pytest

from policies.cache_control import parse_cache_control
from policies.cacheability import CacheabilityPolicy, bypass_reason, semantic_allowed
from policies.freshness import Freshness, freshness
from policies.keys import request_keys, tenant_from_token
from policies.rules import Rule, TTLPolicy, resolve


def keys(body, tenant="t", namespace="", route="chat"):
    return request_keys(tenant=tenant, namespace=namespace, route=route, body=body)


def chat(*turns, **kw):
    roles = ["user", "assistant"]
    return {"model": "m", "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)], **kw}


def test_key_ignores_transport_and_key_order():
    a = keys({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0})
    b = keys({"temperature": 0, "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"content": "hi", "role": "user"}], "model": "m"})
    assert a.key == b.key


@pytest.mark.parametrize("change", [
    {"temperature": 0.5}, {"max_tokens": 7}, {"seed": 3}, {"stop": ["x"]}, {"n": 2}, {"tools": []},
    {"response_format": {"type": "json_object"}}, {"logit_bias": {"1": 2}}, {"some_future_field": 1},
])
def test_every_output_changing_field_and_unknown_fields_change_the_key(change):
    base = chat("hi", temperature=0)
    assert keys(base).key != keys({**base, **change}).key


def test_tenant_namespace_and_route_scope_everything():
    b = chat("hi")
    ks = {keys(b).key, keys(b, tenant="u").key, keys(b, namespace="ns").key, keys({"model": "m", "prompt": "hi"},
                                                                                 route="completion").key}
    assert len(ks) == 4
    assert keys(b).partition != keys(b, tenant="u").partition
    assert keys(b).request_digest == keys(b, tenant="u").request_digest


def test_semantic_text_is_the_last_user_turn_and_context_is_in_the_partition():
    cal = chat("Create an event for Monday", "Done: 'Standup' on Monday.", "delete it")
    acc = chat("Create a user account for Bob", "Account bob created.", "delete it")
    kc, ka = keys(cal), keys(acc)
    assert kc.semantic_text == ka.semantic_text == "delete it"
    assert kc.partition != ka.partition
    # a paraphrase of the last turn keeps the partition
    assert keys(chat("Create an event for Monday", "Done: 'Standup' on Monday.", "remove it")).partition == kc.partition


def test_system_prompt_and_parameters_are_in_the_partition():
    a = {"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]}
    b = {"model": "m", "messages": [{"role": "system", "content": "be long"}, {"role": "user", "content": "q"}]}
    assert keys(a).partition != keys(b).partition
    assert keys(chat("q", temperature=0)).partition != keys(chat("q", temperature=1)).partition
    assert keys(chat("q")).partition != keys({**chat("q"), "model": "other"}).partition


def test_no_semantic_form_for_images_or_non_user_last_turn():
    img = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:x"}}]}]}
    assert keys(img).semantic_text is None
    assert keys({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}).semantic_text is None
    parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                     {"type": "text", "text": "b"}]}]}
    assert keys(parts).semantic_text == "a\nb"


def test_tenant_is_a_hash_and_never_the_token():
    t = tenant_from_token("sk-secret")
    assert "secret" not in t and t == tenant_from_token("sk-secret") != tenant_from_token("sk-other")


def test_cache_control_parsing():
    cc = parse_cache_control("No-Cache, max-age=30, foo")
    assert cc.no_cache and not cc.no_store and cc.max_age == 30
    assert parse_cache_control("no-store").no_store
    assert parse_cache_control("max-age=abc").max_age is None
    assert parse_cache_control("max-age=0").max_age == 0


def test_freshness_transitions():
    assert freshness(100, 10, 5, 105) is Freshness.FRESH
    assert freshness(100, 10, 5, 110) is Freshness.GRACE
    assert freshness(100, 10, 5, 115) is Freshness.EXPIRED
    assert freshness(100, 10, 5, 105, max_age=3) is Freshness.EXPIRED
    assert freshness(100, 10, 5, 111, max_age=60) is Freshness.EXPIRED  # max-age never accepts stale
    assert freshness(100, 0, 0, 100) is Freshness.EXPIRED  # ttl 0 means never fresh


def test_rules_first_match_wins_per_field_and_ttl_is_capped():
    rules = [Rule(model="gpt-4*", ttl_s=60), Rule(namespace="docs", threshold=0.95, ttl_s=999_999),
             Rule(model="*", grace_s=1)]
    ttl = TTLPolicy(default_s=3600, grace_s=300, max_s=86400)
    r = resolve(rules, ttl, 0.9, model="gpt-4o", route="chat", namespace="docs")
    assert (r.ttl_s, r.threshold, r.grace_s) == (60, 0.95, 1)
    r = resolve(rules, ttl, 0.9, model="llama", route="chat", namespace="docs")
    assert r.ttl_s == 86400  # capped at max
    r = resolve(rules, ttl, 0.9, model="llama", route="chat", namespace="")
    assert (r.ttl_s, r.threshold, r.cache) == (3600, 0.9, True)
    assert resolve([Rule(model="x", cache=False)], ttl, 0.9, model="x", route="chat", namespace="").cache is False


def test_ttl_policy_rejects_default_over_max():
    with pytest.raises(ValueError):
        TTLPolicy(default_s=10, max_s=5)


def test_cacheability_defaults_and_switches():
    p = CacheabilityPolicy()
    assert bypass_reason(chat("q", temperature=1.5), p) is None
    assert bypass_reason(chat("q", temperature=1.5), CacheabilityPolicy(max_temperature=1.0)) == "temperature"
    assert bypass_reason(chat("q", n=3), CacheabilityPolicy(cache_multiple_choices=False)) == "n"
    assert semantic_allowed(chat("q"), p)
    assert not semantic_allowed(chat("q", tools=[{"type": "function"}]), p)
    assert not semantic_allowed(chat("q", n=2), p)
    assert not semantic_allowed(chat("q", logprobs=True), p)


def test_a_last_turn_over_the_semantic_limit_has_no_semantic_form():
    from policies.cache_control import CacheControl
    from policies.decision import decide
    from policies.rules import Resolved

    def decision(text):
        return decide(route="chat", body=chat(text), tenant="t", namespace="", cc=CacheControl(), tags=(),
                      resolved=Resolved(ttl_s=60, grace_s=0, threshold=0.9, cache=True),
                      cacheability=CacheabilityPolicy(), semantic_enabled=True, max_semantic_chars=20)

    short, long = decision("x" * 20), decision("x" * 21)
    assert short.semantic and short.keys.semantic_text == "x" * 20
    assert not long.semantic and long.keys.semantic_text is None  # neither read from nor stored in L3
    assert long.read and long.write and long.keys.partition == keys(chat("y")).partition  # exact layers as ever
