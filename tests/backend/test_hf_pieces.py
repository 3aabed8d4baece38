"""Units of the reference backend: the tiny model, detokenisation, stop handling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from backend.hf_detokenizer import IncrementalDetokenizer
from backend.openai_format import cut_at_stop, held_back


def test_tiny_model_directory_loads_offline(tiny_model_dir):
    files = {p.name for p in Path(tiny_model_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    config = AutoConfig.from_pretrained(tiny_model_dir, local_files_only=True)
    assert config.hidden_size == 64 and config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                   add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert json.loads((Path(tiny_model_dir) / "config.json").read_text())["vocab_size"] == len(tok)


@pytest.mark.parametrize("text", ["plain words here", "café naïve über", "日本 東京 数据",
                                  "emoji 🙂🚀 and — … €", "привет мир γειά"])
def test_incremental_detokenizer_never_splits_a_character(tiny_model_dir, text):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    prompt = tok("Some prompt:", add_special_tokens=False)["input_ids"]
    # byte-level pieces: force one token per byte so characters span tokens
    ids = tok(text, add_special_tokens=False)["input_ids"]
    byte_ids = []
    for token in tok.convert_ids_to_tokens(ids):
        byte_ids.extend(tok.convert_tokens_to_ids(list(token)))
    for seq in (ids, byte_ids):
        detok = IncrementalDetokenizer(tok, prompt)
        deltas = [detok.add(i) for i in seq]
        deltas.append(detok.flush())
        assert "".join(deltas) == text
        assert not any("\ufffd" in d for d in deltas)
    assert len(byte_ids) > len(text.replace(" ", ""))  # characters did span several tokens


def test_stop_helpers():
    assert cut_at_stop("hello world", ("wor", "lo")) == ("hel", True)
    assert cut_at_stop("hello", ("xyz",)) == ("hello", False)
    assert held_back("the end of", ("of course", "zzz")) == 2
    assert held_back("the end o", ("of course",)) == 1
    assert held_back("nothing", ("xyz",)) == 0
    assert held_back("anything", ()) == 0


def test_plain_prompt_fallback_without_a_chat_template(tiny_model_dir):
    import orjson

    from backend.hf_engine import HFEngine, load_model
    from backend.openai_format import parse_request

    model, tok, device = load_model(tiny_model_dir, "cpu", "fp32")
    tok.chat_template = None
    engine = HFEngine(model, tok, device, max_batch=2)
    try:
        req = parse_request("chat", orjson.dumps({"model": "m", "messages": [
            {"role": "system", "content": "Be short."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}))
        expected = tok("system: Be short.\nuser: hi\nassistant:")["input_ids"]
        assert engine.prompt_ids(req) == expected
    finally:
        engine.close()
