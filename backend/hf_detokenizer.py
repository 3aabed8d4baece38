"""Incremental detokenisation: text as soon as it is decoded, never half a character.

Decoding one token at a time is wrong for byte-level and SentencePiece vocabularies: a
character may span tokens (the partial decode ends in U+FFFD) and a token's leading
space depends on the token before it. `IncrementalDetokenizer` decodes a short window
twice (with and without the newest tokens) and emits the difference, only once it does
not end in U+FFFD (the approach of TGI and vLLM). The window starts with the last few
prompt tokens so that the first generated token decodes in context.
"""
from __future__ import annotations

from typing import Any

_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False)

    def _pending(self) -> str:
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        return after[len(before):] if len(after) > len(before) else ""

    def add(self, token_id: int) -> str:
        """Feed one generated token; returns the newly complete text (maybe "")."""
        self._ids.append(token_id)
        new = self._pending()
        if not new or new.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return new

    def flush(self) -> str:
        """At the end of generation: whatever is still held back, incomplete bytes included."""
        new = self._pending()
        self._prefix = self._read = len(self._ids)
        return new
