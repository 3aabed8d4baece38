"""Exact keys, semantic partitions and tenants (pure; no I/O).

The exact key hashes tenant, namespace, route and the canonical JSON (sorted keys,
no insignificant whitespace) of every request field except those that only change
transport. Unknown fields stay in the key: being conservative costs hit rate, not
correctness. The semantic partition is the same thing minus the *text* of the last
user turn, so a semantic hit needs the same tenant, namespace, model, parameters and
conversation before that turn.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

TRANSPORT_FIELDS = frozenset({"stream", "stream_options"})
"""Fields that change how the answer is delivered, never what it is."""

ANONYMOUS_TENANT = "anonymous"


@dataclass(frozen=True, slots=True)
class RequestKeys:
    key: str
    partition: str
    request_digest: str
    """The request contract alone (route + canonical body, no tenant or namespace): what
    an operator's "purge this request" matches across tenants."""
    semantic_text: str | None
    """The last user turn's text, or None when the request has no semantic form
    (last message not from the user, non-text content parts, token-id prompts)."""


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=20)
    for p in parts:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def tenant_from_token(token: str | None) -> str:
    """Tenants are a hash of the bearer token: the token itself is never stored."""
    if not token:
        return ANONYMOUS_TENANT
    return hashlib.blake2b(token.encode(), digest_size=12, person=b"sc-tenant").hexdigest()


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None  # images, audio, files: no semantic form
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def _split_semantic(route: str, body: dict) -> tuple[dict, str | None]:
    """Return (body with the semantic text blanked, semantic text or None)."""
    if route == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return body, None
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return body, None
        text = _text_of(last.get("content"))
        if text is None or not text.strip():
            return body, None
        blank_last = {k: v for k, v in last.items() if k != "content"}
        return {**body, "messages": [*messages[:-1], blank_last]}, text
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt.strip():
        return {k: v for k, v in body.items() if k != "prompt"}, prompt
    return body, None


def request_keys(*, tenant: str, namespace: str, route: str, body: dict) -> RequestKeys:
    """Keys for one parsed request body. `route` is "chat" or "completion"."""
    contract = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    scope = f"{tenant}\x1f{namespace}\x1f{route}".encode()
    canonical = canonical_json(contract)
    key = _digest(b"exact", scope, canonical)
    rest, text = _split_semantic(route, contract)
    partition = _digest(b"partition", scope, canonical_json(rest))
    return RequestKeys(key=key, partition=partition, request_digest=_digest(b"request", route.encode(), canonical),
                       semantic_text=text)
