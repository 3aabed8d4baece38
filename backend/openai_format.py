"""OpenAI wire shapes shared by both backends: request parsing, JSON bodies, SSE chunks.

Pure data in, data out: no sockets, no framework. `parse_request` turns a raw request
body into a `GenerationRequest` or raises `RequestError` (the servers answer 400 with
`error_body`). `ResponseFormat` builds the non-stream body and every stream chunk of one
response, so both backends emit byte-for-byte the same structure.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Route = Literal["chat", "completion"]
FinishReason = Literal["stop", "length", "tool_calls"]

SSE_DONE = b"data: [DONE]\n\n"


class RequestError(ValueError):
    """A malformed generation request: answered with 400 and `error_body`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_body(message: str, type: str = "invalid_request_error",
               param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """The fields of a chat or completions request that a backend acts on.

    `body` is the whole parsed JSON object (for hashing, or fields a backend ignores).
    `max_tokens` is None when the client set no limit. `stop` never holds empty strings.
    """

    route: Route
    model: str
    messages: tuple[dict[str, Any], ...] | None
    prompt: str | None
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool
    body: dict[str, Any] = field(repr=False)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt_int(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise RequestError(f"'{name}' must be an integer {bound}", param=name)
    return v


def _opt_float(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v) or not lo <= v <= hi:
        raise RequestError(f"'{name}' must be a number between {lo} and {hi}", param=name)
    return float(v)


def _parse_messages(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        raise RequestError("'messages' is a required property", param="messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'",
                               param=f"messages[{i}]")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise RequestError(f"messages[{i}].content must be a string or an array",
                               param=f"messages[{i}].content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise RequestError(f"messages[{i}].content parts must be objects with a 'type'",
                                       param=f"messages[{i}].content")
    return tuple(raw)


def _parse_prompt(raw: Any) -> str:
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        raw = raw[0]
    if not isinstance(raw, str):
        raise RequestError("'prompt' must be a string (a single prompt)", param="prompt")
    return raw


def _parse_stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise RequestError("'stop' must be a string or an array of strings", param="stop")
    return tuple(s for s in raw if s)


def parse_request(route: Route, raw: bytes, *, max_n: int = 16) -> GenerationRequest:
    """Parse and validate a request body; raises `RequestError` on anything malformed."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is a required string", param="model")
    messages = prompt = None
    if route == "chat":
        messages = _parse_messages(body.get("messages"))
    else:
        if "prompt" not in body:
            raise RequestError("'prompt' is a required property", param="prompt")
        prompt = _parse_prompt(body["prompt"])
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", 1)
    seed = body.get("seed")
    if seed is not None and not (_is_int(seed) and -2**63 <= seed < 2**63):
        raise RequestError("'seed' must be a 64-bit integer", param="seed")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    include_usage = bool(opts and opts.get("include_usage"))
    n = _opt_int(body, "n", 1, max_n)
    return GenerationRequest(
        route=route, model=model, messages=messages, prompt=prompt, max_tokens=max_tokens,
        temperature=_opt_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_opt_float(body, "top_p", 1.0, 0.0, 1.0),
        seed=seed, stop=_parse_stop(body.get("stop")), n=1 if n is None else n,
        stream=stream, include_usage=include_usage, body=body,
    )


def message_text(message: dict[str, Any]) -> str:
    """The text of a message's content (string, or the text parts of an array)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; returns (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters of `text` may be the start of a stop string.

    A stream must hold those back until it knows whether the stop string completes.
    """
    keep = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:k]):
                keep = k
                break
    return keep


# ---------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class Choice:
    """One finished choice of a non-stream response."""

    index: int
    text: str | None
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class ResponseFormat:
    """Builds the body or the stream chunks of one response (one id, one `created`)."""

    def __init__(self, route: Route, model: str, fingerprint: str) -> None:
        self.route = route
        self.model = model
        self.fingerprint = fingerprint
        prefix = "chatcmpl" if route == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, "choices": choices}

    def body(self, choices: list[Choice], usage: Usage) -> dict[str, Any]:
        if self.route == "chat":
            out = []
            for c in choices:
                msg: dict[str, Any] = {"role": "assistant", "content": c.text}
                if c.tool_calls:
                    msg["tool_calls"] = [t.as_dict() for t in c.tool_calls]
                out.append({"index": c.index, "message": msg, "logprobs": None,
                            "finish_reason": c.finish_reason})
            resp = self._envelope("chat.completion", out)
        else:
            resp = self._envelope("text_completion", [
                {"index": c.index, "text": c.text or "", "logprobs": None,
                 "finish_reason": c.finish_reason} for c in choices])
        resp["usage"] = usage.as_dict()
        return resp

    def _chunk(self, index: int, delta: dict[str, Any] | None, text: str | None,
               finish_reason: str | None) -> dict[str, Any]:
        if self.route == "chat":
            choice = {"index": index, "delta": delta or {}, "logprobs": None,
                      "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": index, "text": text or "", "logprobs": None,
                  "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice])

    def role_chunk(self, index: int) -> dict[str, Any] | None:
        """The opening chunk of a chat choice; completions streams have none."""
        if self.route != "chat":
            return None
        return self._chunk(index, {"role": "assistant", "content": ""}, None, None)

    def text_chunk(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk(index, {"content": text}, text, None)

    def tool_call_chunk(self, index: int, call_index: int, *, call: ToolCall | None = None,
                        arguments: str = "") -> dict[str, Any]:
        """A tool-call delta: the header (id, type, name) when `call` is given, else an
        argument fragment. The header chunk also carries the assistant role."""
        fn: dict[str, Any] = {"arguments": arguments}
        tc: dict[str, Any] = {"index": call_index}
        delta: dict[str, Any] = {"tool_calls": [tc]}
        if call is not None:
            tc.update(id=call.id, type="function")
            fn["name"] = call.name
            delta = {"role": "assistant", "content": None, **delta}
        tc["function"] = fn
        return self._chunk(index, delta, None, None)

    def finish_chunk(self, index: int, finish_reason: FinishReason) -> dict[str, Any]:
        return self._chunk(index, {}, "", finish_reason)

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        resp = self._envelope("chat.completion.chunk" if self.route == "chat"
                              else "text_completion", [])
        resp["usage"] = usage.as_dict()
        return resp
