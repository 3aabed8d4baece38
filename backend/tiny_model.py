"""Build a tiny randomly initialised causal LM with a tokenizer and chat template, offline.

`make_tiny_model(path)` writes a Hugging Face model directory (Llama architecture,
2 layers, hidden size 64; a byte-level BPE tokenizer of about 1k tokens trained on
generated sentences; a ChatML chat template) that `AutoModelForCausalLM` and
`AutoTokenizer` load with no hub access. The weights are random (seeded, so two builds
are identical) and deliberately large, so that logits are well separated and greedy
decoding is stable under the rounding differences of batched versus solo forward passes.
The output is gibberish, multi-byte characters included: good for tests and demos.
"""
from __future__ import annotations

import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
VOCAB_SIZE = 1024

_WORDS = (
    "cache proxy model token stream answer question layer vector memory request server "
    "the a of to and in is it that for on with as was at by be this from or have an "
    "fast slow small large good new old first last long short high low right left "
    "river mountain city garden window music light night morning water coffee paper "
    "café naïve über señor façade 日本 東京 学校 数据 缓存 привет мир γειά 🙂 🚀 ✓ — … €"
).split()


def _corpus(n: int = 800) -> list[str]:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return lines


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token=None,
                                   additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(path: str) -> None:
    """Write a tiny random causal LM, its tokenizer and chat template to directory `path`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|pad|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, initializer_range=0.3, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=eos, pad_token_id=pad,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
