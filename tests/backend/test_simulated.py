"""The simulated backend through the stock openai SDK, against a real uvicorn server."""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from backend.simulated import DEFAULT_ANSWER_TOKENS, FINGERPRINT, create_app


def _msgs(text: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


@pytest.fixture
def client(sim_url):
    with openai.OpenAI(base_url=sim_url, api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(sim_url):
    async with openai.AsyncOpenAI(base_url=sim_url, api_key="sk-test", max_retries=0) as c:
        yield c


def test_same_request_same_answer_and_different_prompts_differ(client):
    a = client.chat.completions.create(model="m1", messages=_msgs("what is a cache"))
    b = client.chat.completions.create(model="m1", messages=_msgs("what is a cache"))
    c = client.chat.completions.create(model="m1", messages=_msgs("what is a proxy"))
    d = client.chat.completions.create(model="m2", messages=_msgs("what is a cache"))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert len({a.choices[0].message.content, c.choices[0].message.content,
                d.choices[0].message.content}) == 3
    assert a.id != b.id
    assert a.model == "m1" and d.model == "m2"
    assert a.system_fingerprint == FINGERPRINT
    assert a.choices[0].finish_reason == "stop"
    assert a.usage.completion_tokens == DEFAULT_ANSWER_TOKENS
    assert a.usage.prompt_tokens == 7  # "Be" "brief" "." + four words
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens


def test_max_tokens_cuts_a_prefix_with_finish_length(client):
    full = client.chat.completions.create(model="m", messages=_msgs("tell me"))
    for field in ("max_tokens", "max_completion_tokens"):
        cut = client.chat.completions.create(model="m", messages=_msgs("tell me"), **{field: 5})
        assert cut.choices[0].finish_reason == "length"
        assert cut.usage.completion_tokens == 5
        assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    big = client.chat.completions.create(model="m", messages=_msgs("tell me"), max_tokens=500)
    assert big.choices[0].message.content == full.choices[0].message.content
    assert big.choices[0].finish_reason == "stop"


def test_stop_cuts_before_the_stop_text(client):
    full = client.chat.completions.create(model="m", messages=_msgs("a story")).choices[0]
    words = full.message.content.split()
    stop = " " + words[len(words) // 2]
    expected = full.message.content.split(stop)[0]
    for stop_arg in (stop, [stop, "zzz-never"]):
        got = client.chat.completions.create(model="m", messages=_msgs("a story"), stop=stop_arg)
        assert got.choices[0].message.content == expected
        assert got.choices[0].finish_reason == "stop"
        assert stop not in got.choices[0].message.content


def test_stream_matches_non_stream_and_reports_usage(client):
    kw = dict(model="m", messages=_msgs("stream this"), max_tokens=12)
    body = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == body.choices[0].message.content
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 12  # one token per chunk
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.total_tokens == body.usage.total_tokens
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    plain = list(client.chat.completions.create(**kw, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_completions_route_stream_and_non_stream(client):
    body = client.completions.create(model="m", prompt="Once upon a time", max_tokens=7)
    assert body.object == "text_completion"
    assert body.choices[0].finish_reason == "length"
    assert body.usage.prompt_tokens == 4 and body.usage.completion_tokens == 7
    chunks = list(client.completions.create(model="m", prompt="Once upon a time",
                                            max_tokens=7, stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == body.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_async_n_choices_are_distinct_and_deterministic(aclient):
    kw = dict(model="m", messages=_msgs("pick three"), n=3, max_tokens=8)
    a = await aclient.chat.completions.create(**kw)
    b = await aclient.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len(set(texts)) == 3
    assert texts == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens == 24
    streamed = {0: "", 1: "", 2: ""}
    finish = {}
    async for chunk in await aclient.chat.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            streamed[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert [streamed[i] for i in range(3)] == texts
    assert finish == {0: "length", 1: "length", 2: "length"}


async def test_many_concurrent_streams(serve_app):
    with serve_app(create_app(ttft_ms=5, tokens_per_s=2000)) as base:
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="k", max_retries=0) as c:
            async def one(i: int) -> str:
                out = ""
                stream = await c.chat.completions.create(
                    model="m", messages=_msgs(f"question {i}"), max_tokens=10, stream=True)
                async for chunk in stream:
                    out += chunk.choices[0].delta.content or ""
                return out

            results = await asyncio.gather(*(one(i) for i in range(24)))
            assert len(set(results)) == 24
            async with httpx.AsyncClient() as h:
                assert (await h.get(base + "/stats")).json() == {"requests": 24}


def test_stats_counts_generation_requests(client, sim_url):
    base = sim_url.removesuffix("/v1")
    before = httpx.get(base + "/stats").json()["requests"]
    client.chat.completions.create(model="m", messages=_msgs("one"))
    client.completions.create(model="m", prompt="two")
    list(client.chat.completions.create(model="m", messages=_msgs("three"), stream=True))
    client.models.list()
    httpx.get(base + "/healthz")
    assert httpx.get(base + "/stats").json()["requests"] == before + 3


def test_injected_500_has_openai_error_shape(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=_msgs("x"),
                                       extra_headers={"X-Sim-Fail": "500"})
    assert info.value.status_code == 500
    err = info.value.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=_msgs("x"),
                                       extra_headers={"X-Sim-Fail": "429"})


def test_mid_stream_failure_drops_the_connection(client, sim_url):
    seen = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in client.chat.completions.create(
                model="m", messages=_msgs("x"), stream=True,
                extra_headers={"X-Sim-Fail": "mid-stream"}):
            seen.append(chunk)
    assert [c.choices[0].finish_reason for c in seen] == [None] * len(seen)
    assert 1 <= len(seen) <= 4
    with pytest.raises(httpx.HTTPError):
        httpx.post(sim_url + "/chat/completions", headers={"X-Sim-Fail": "mid-stream"},
                   json={"model": "m", "messages": _msgs("x")}).json()


def test_tool_call_stream_and_body_parse_in_the_sdk(client):
    kw = dict(model="m", messages=_msgs("weather in Paris?"),
              tools=[{"type": "function", "function": {
                  "name": "get_weather", "parameters": {"type": "object", "properties": {
                      "location": {"type": "string"}}}}}],
              extra_headers={"X-Sim-Tool-Call": "1"})
    body = client.chat.completions.create(**kw)
    msg = body.choices[0].message
    assert body.choices[0].finish_reason == "tool_calls" and msg.content is None
    assert msg.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.tool_calls[0].function.arguments)["unit"] == "celsius"
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.id == msg.tool_calls[0].id
    assert call.function.arguments == msg.tool_calls[0].function.arguments


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'{"model": "m"}', b'{"model": "m", "messages": []}',
    b'{"model": "m", "messages": [{"content": "no role"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3}',
    b'{"messages": [{"role": "user", "content": "x"}]}',
])
def test_bad_requests_get_400_in_openai_shape(sim_url, body):
    r = httpx.post(sim_url + "/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_models_and_health(client, sim_url):
    assert [m.id for m in client.models.list()] == ["stratacache-simulated"]
    assert httpx.get(sim_url.removesuffix("/v1") + "/healthz").status_code == 200
