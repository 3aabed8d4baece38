"""The real model: torch and ONNX Runtime backends, their agreement, and the loader.

The ONNX export runs once per test session, into a temporary directory.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from embeddings.loader import EmbedderConfig, load_embedder
from embeddings.onnx_backend import Agreement, OnnxBackend
from embeddings.protocol import Embedder
from embeddings.sentence_transformer import DEFAULT_MODEL_NAME, SentenceTransformerBackend, default_model_path

pytestmark = pytest.mark.slow

SENTENCES = [
    "How do I learn Python quickly?",
    "What is the fastest way to learn Python?",
    "What is the capital of Germany?",
    "Who wrote Pride and Prejudice?",
    "How can I lose weight without dieting?",
    "Why is the sky blue?",
    "What's the best way to invest $1000?",
    "How does a refrigerator work?",
    "Can you recommend a good science fiction novel?",
    "Translate 'good morning' into Japanese.",
    "What are the symptoms of vitamin D deficiency?",
    "Is it safe to eat raw cookie dough?",
    "Summarise the plot of Hamlet in three sentences.",
    "How many moons does Jupiter have?",
    "What should I pack for a week in Iceland?",
    "Explain recursion to a five year old.",
    "Write a SQL query that counts orders per customer.",
    "Why do cats purr?",
    "What is the difference between affect and effect?",
    "Give me a recipe for vegan pancakes.",
    "thanks",
    "Delete it.",
]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def torch_backend() -> SentenceTransformerBackend:
    return SentenceTransformerBackend(device="cpu")


@pytest.fixture(scope="session")
def onnx_fp32(onnx_cache) -> OnnxBackend:
    return OnnxBackend.from_model(quantize=False, cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def onnx_int8(onnx_fp32, onnx_cache) -> OnnxBackend:  # after fp32: the export is shared
    return OnnxBackend.from_model(quantize=True, cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def onnx_int8_weights(onnx_fp32, onnx_cache) -> OnnxBackend:
    return OnnxBackend.from_model(quantize=True, weight_only=True, cache_dir=onnx_cache)


@pytest.fixture(params=["torch_backend", "onnx_fp32", "onnx_int8", "onnx_int8_weights"])
def backend(request):
    return request.getfixturevalue(request.param)


def test_vectors_are_normalised_float32_rows(backend):
    out = backend.encode(["hello world", "a second, longer sentence to pad against"])
    assert out.shape == (2, 384) and out.dtype == np.float32
    assert backend.dim == 384 and backend.model_name == DEFAULT_MODEL_NAME
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_a_paraphrase_is_closer_than_an_unrelated_question(backend):
    q, para, other = backend.encode([
        "What is the capital of France?", "What's the capital city of France?", "How do I bake sourdough bread?",
    ])
    assert q @ para > 0.85 > 0.3 > q @ other


def test_onnx_agrees_with_torch(torch_backend, onnx_fp32, onnx_int8, onnx_int8_weights):
    reference = torch_backend.encode(SENTENCES)
    fp32 = Agreement.between(onnx_fp32.encode(SENTENCES), reference)
    assert fp32.min >= 0.999
    for int8 in (onnx_int8, onnx_int8_weights):
        # plain quantize_dynamic (per-channel weights): 0.9939 mean, 0.9685 worst here, on "thanks"
        assert Agreement.between(int8.encode(SENTENCES), reference).min >= 0.99, int8.engine
        assert int8.agreement.mean >= 0.995 and int8.agreement.min >= 0.99, int8.engine  # at load, on the probe texts


def test_onnx_truncates_like_torch(torch_backend, onnx_fp32):
    long_text = " ".join(f"word{i} is followed by another word" for i in range(200))  # > 256 tokens
    assert Agreement.between(onnx_fp32.encode([long_text]), torch_backend.encode([long_text])).min >= 0.999


def test_onnx_vectors_do_not_depend_on_batch_neighbours(onnx_int8):
    # Dynamic int8 quantises a whole activation tensor with one scale: one text per run.
    alone = onnx_int8.encode(SENTENCES[:1])
    mixed = onnx_int8.encode([SENTENCES[0] + " and much more text " * 20] * 40 + SENTENCES[:1])
    np.testing.assert_allclose(mixed[-1], alone[0], atol=1e-6)


def test_a_lone_text_on_two_threads_gets_its_batch_vector(onnx_int8, onnx_cache):
    # A lone text runs on its own session (more threads); a batch on the one-thread session.
    two = OnnxBackend.from_model(quantize=True, cache_dir=onnx_cache, threads=1, single_text_threads=2)
    assert two._lone_session is not two._session
    batch = two.encode(SENTENCES)
    lone = np.concatenate([two.encode([s]) for s in SENTENCES])
    np.testing.assert_allclose(lone, batch, atol=1e-5)
    np.testing.assert_allclose(lone, onnx_int8.encode(SENTENCES), atol=1e-5)
    assert two.agreement.min >= 0.99


def test_the_export_is_reused(onnx_int8, onnx_cache):
    (export_dir,) = [p for p in onnx_cache.iterdir() if not p.name.startswith(".")]
    before = {p.name: p.stat().st_mtime_ns for p in export_dir.iterdir()}
    OnnxBackend.from_model(quantize=True, cache_dir=onnx_cache)
    assert {p.name: p.stat().st_mtime_ns for p in export_dir.iterdir()} == before
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "pipeline.json", "probe.npy"} <= set(before)


async def test_load_embedder_picks_onnx_on_cpu(onnx_int8, onnx_cache, torch_backend):
    embedder = load_embedder(EmbedderConfig(device="cpu", cache_dir=str(onnx_cache), timeout_s=5))
    try:
        assert isinstance(embedder, Embedder)
        assert embedder.engine == "onnx:int8"
        out = await embedder.embed(SENTENCES[:3])
        assert Agreement.between(out, torch_backend.encode(SENTENCES[:3])).min >= 0.98
    finally:
        await embedder.aclose()


async def test_load_embedder_falls_back_to_weight_only_int8(onnx_int8_weights, onnx_cache, tmp_path, caplog):
    # The session's export, but a dynamic int8 model that does not agree with torch: plain
    # quantize_dynamic, one scale per activation tensor and per weight tensor (0.944 mean, 0.875 worst).
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    (export_dir,) = [p for p in onnx_cache.iterdir() if not p.name.startswith(".")]
    copy = tmp_path / "onnx" / export_dir.name
    copy.mkdir(parents=True)
    for file in export_dir.iterdir():
        if file.name != "model.int8.onnx":
            os.symlink(file, copy / file.name)
    quantize_dynamic(export_dir / "model.onnx", copy / "model.int8.onnx", op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    with caplog.at_level(logging.WARNING, logger="embeddings.loader"):
        embedder = load_embedder(EmbedderConfig(device="cpu", cache_dir=str(tmp_path / "onnx"), timeout_s=5))
    try:
        assert embedder.engine == "onnx:int8-weights"
        assert "not using onnx:int8:" in caplog.text
        assert (await embedder.embed(["hi"])).shape == (1, 384)
    finally:
        await embedder.aclose()


async def test_load_embedder_falls_back_to_torch_when_onnx_cannot_export(tmp_path, caplog):
    # A copy of the model whose pooling the ONNX path does not implement.
    model = tmp_path / "max-pooled"
    for src in Path(default_model_path()).rglob("*"):
        dst = model / src.relative_to(default_model_path())
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    pooling = model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    pooling.unlink()
    pooling.write_text(json.dumps(config))

    with caplog.at_level(logging.WARNING, logger="embeddings.loader"):
        embedder = load_embedder(EmbedderConfig(model_path=str(model), cache_dir=str(tmp_path / "onnx")))
    try:
        assert embedder.engine == "torch:cpu" and embedder.model_name == "max-pooled"
        assert "ONNX Runtime unavailable" in caplog.text
        assert (await embedder.embed(["hi"])).shape == (1, 384)
    finally:
        await embedder.aclose()
