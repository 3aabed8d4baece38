"""The reference backend over the tiny model, through the stock openai SDK on a real server."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import torch
from transformers import AutoTokenizer

from backend.hf_engine import ModelLoadError
from backend.hf_server import create_app

LONG = {"ignore_eos": True}  # vLLM extension: generate exactly max_tokens tokens

from tests.conftest import eventually


def _msgs(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are tiny."}, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def hf_url(tiny_model_dir, serve_app):
    with serve_app(create_app(tiny_model_dir, device="cpu", dtype="fp32", max_batch=8)) as base:
        yield base


@pytest.fixture
def client(hf_url):
    with openai.OpenAI(base_url=hf_url + "/v1", api_key="k", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _stats(hf_url: str) -> dict:
    return httpx.get(hf_url + "/stats").json()


def _wait_idle(hf_url: str) -> dict:
    def idle():
        stats = _stats(hf_url)
        return not (stats["running"] or stats["waiting"]) and stats
    return eventually(idle, 20, "the engine going idle", interval=0.05)


def test_bad_model_paths_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        create_app(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        create_app(str(tmp_path))


def test_models_lists_the_directory(client, tiny_model_dir):
    from pathlib import Path

    assert [m.id for m in client.models.list()] == [Path(tiny_model_dir).name]


def test_stream_and_non_stream_agree_with_usage_from_the_tokenizer(client, tokenizer):
    kw = dict(model="tiny", messages=_msgs("hello café 日本"), max_tokens=12, temperature=0,
              extra_body=LONG)
    body = client.chat.completions.create(**kw)
    assert body.model == "tiny" and body.system_fingerprint == "stratacache-hf"
    assert body.choices[0].finish_reason == "length"
    template = tokenizer.apply_chat_template(_msgs("hello café 日本"), add_generation_prompt=True,
                                             tokenize=False)
    expected_prompt = len(tokenizer(template, add_special_tokens=False)["input_ids"])
    assert body.usage.prompt_tokens == expected_prompt
    assert body.usage.completion_tokens == 12
    assert body.usage.total_tokens == expected_prompt + 12
    chunks = list(client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == body.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == body.usage.total_tokens


def test_completions_route_and_max_tokens_length(client, tokenizer):
    body = client.completions.create(model="tiny", prompt="The river", max_tokens=7,
                                     temperature=0, extra_body=LONG)
    assert body.object == "text_completion"
    assert body.choices[0].finish_reason == "length"
    assert body.usage.prompt_tokens == len(tokenizer("The river")["input_ids"])
    assert body.usage.completion_tokens == 7
    chunks = list(client.completions.create(model="tiny", prompt="The river", max_tokens=7,
                                            temperature=0, extra_body=LONG, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == body.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_sequences_cut_before_the_stop_text(client):
    kw = dict(model="tiny", messages=_msgs("tell me about rivers"), max_tokens=40,
              temperature=0, extra_body=LONG)
    full = client.chat.completions.create(**kw).choices[0].message.content
    # a printable stop string from the middle of the greedy answer
    start = next(i for i in range(len(full) // 3, len(full) - 2)
                 if all(ch.isprintable() and ch != "\ufffd" for ch in full[i:i + 2]))
    stop = full[start:start + 2]
    expected = full[:full.find(stop)]
    got = client.chat.completions.create(**kw, stop=[stop, "never-there"])
    assert got.choices[0].message.content == expected
    assert got.choices[0].finish_reason == "stop"
    streamed = list(client.chat.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


async def test_concurrent_requests_match_solo_runs(hf_url):
    requests = []
    for i in range(8):
        sampled = {"temperature": 0.8, "top_p": 0.9, "seed": 100 + i} if i % 2 else {"temperature": 0}
        requests.append(dict(model="tiny", messages=_msgs(f"question {i} " * (1 + i % 3)),
                             max_tokens=10 + 3 * i, extra_body=LONG, **sampled))
    requests.append(dict(model="tiny", messages=_msgs("two choices"), n=2, seed=7,
                         max_tokens=15, extra_body=LONG))
    async with openai.AsyncOpenAI(base_url=hf_url + "/v1", api_key="k", max_retries=0) as c:
        async def texts(kw: dict, stream: bool) -> list[str]:
            if not stream:
                r = await c.chat.completions.create(**kw)
                return [ch.message.content for ch in r.choices]
            out = [""] * kw.get("n", 1)
            async for chunk in await c.chat.completions.create(**kw, stream=True):
                for ch in chunk.choices:
                    out[ch.index] += ch.delta.content or ""
            return out

        solo = [await texts(kw, stream=False) for kw in requests]
        together = await asyncio.gather(*(texts(kw, stream=i % 2 == 0)
                                          for i, kw in enumerate(requests)))
    assert together == solo
    assert len(set(solo[-1])) == 2  # the two seeded choices differ
    assert _wait_idle(hf_url)["peak_running"] >= 2


def test_stream_disconnect_frees_the_slot(client, hf_url):
    before = _wait_idle(hf_url)["cancelled"]
    stream = client.chat.completions.create(model="tiny", messages=_msgs("go on forever"),
                                            max_tokens=900, extra_body=LONG, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    stats = _wait_idle(hf_url)
    assert stats["cancelled"] == before + 1
    again = client.chat.completions.create(model="tiny", messages=_msgs("still up?"),
                                           max_tokens=3)
    assert again.choices[0].finish_reason in ("length", "stop")


def test_non_stream_disconnect_frees_the_slot(hf_url):
    before = _wait_idle(hf_url)["cancelled"]
    # 1000 tokens take ~1 s on the tiny model: a client that gives up after 0.2 s leaves mid-way
    with pytest.raises(httpx.TimeoutException):
        httpx.post(hf_url + "/v1/completions", timeout=0.2,
                   json={"model": "tiny", "prompt": "on and on", "max_tokens": 1000,
                         "ignore_eos": True})
    assert _wait_idle(hf_url)["cancelled"] == before + 1


@pytest.mark.parametrize("body", [
    {"model": "tiny"},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "ignore_eos": "yes"},
    {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 0},
    {"model": "tiny", "prompt": [1, 2, 3]},
    {"model": "tiny", "prompt": "x " * 2000},
])
def test_bad_input_is_a_400_in_openai_shape(hf_url, body):
    route = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    r = httpx.post(hf_url + route, json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_serves_stream_and_non_stream(tiny_model_dir, serve_app):
    with serve_app(create_app(tiny_model_dir, device="cuda", dtype="auto")) as base:
        with openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0) as c:
            kw = dict(model="tiny", messages=_msgs("gpu?"), max_tokens=8, temperature=0,
                      extra_body=LONG)
            body = c.chat.completions.create(**kw)
            chunks = list(c.chat.completions.create(**kw, stream=True))
    assert body.usage.completion_tokens == 8
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == \
        body.choices[0].message.content
