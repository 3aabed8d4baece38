"""Server-sent events: an incremental splitter, a recorder that assembles a completion
from chunks, and the frames that replay an assembled completion as a stream.

Pure: no I/O. Chat (`chat.completion.chunk`) and legacy completions (`text_completion`)
are both handled; per-choice bookkeeping lives in `_Choice`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

DONE_FRAME = b"data: [DONE]\n\n"
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SSESplitter:
    """Feeds raw bytes, yields whole events (bytes including their blank-line end)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while True:
            m = _EVENT_END.search(self._buf)
            if m is None:
                return out
            out.append(self._buf[: m.end()])
            self._buf = self._buf[m.end():]

    @property
    def pending(self) -> bytes:
        return self._buf


def event_data(event: bytes) -> bytes | None:
    """The joined `data:` field of one event, or None for comments/keep-alives."""
    lines = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            v = line[5:]
            lines.append(v[1:] if v.startswith(b" ") else v)
    return b"\n".join(lines) if lines else None


def frame(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class _Choice:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    has_content: bool = False
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] | None = None
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    logprobs: Any = None
    finish_reason: str | None = None


class SSERecorder:
    """Accumulates the events of one upstream stream.

    `feed_event` takes one whole event and returns its kind: "chunk", "usage" (a chunk
    with no choices and a usage object), "done", "error", or "other". A stream is
    complete when every choice has a finish reason, [DONE] was seen and no error came.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "chat" | "completion"
        self.head: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict | None = None
        self.done = False
        self.error = False
        self.frames: list[bytes] = []
        self.usage_frame: bytes | None = None

    def feed_event(self, event: bytes) -> str:
        data = event_data(event)
        if data is None:
            return "other"
        if data.strip() == b"[DONE]":
            self.done = True
            return "done"
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = True
            return "error"
        if not isinstance(obj, dict) or "error" in obj:
            self.error = True
            return "error"
        for k in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if k in obj and k not in self.head:
                self.head[k] = obj[k]
        choices = obj.get("choices") or []
        if obj.get("usage"):
            self.usage = obj["usage"]
        if not choices and obj.get("usage"):
            self.usage_frame = frame(obj)
            return "usage"
        for ch in choices:
            self._apply(ch)
        self.frames.append(frame(obj) if obj.get("usage") is None else frame({**obj, "usage": None}))
        return "chunk"

    def _apply(self, ch: dict) -> None:
        c = self.choices.setdefault(int(ch.get("index", 0) or 0), _Choice())
        if self.kind == "completion":
            if isinstance(ch.get("text"), str):
                c.content.append(ch["text"])
                c.has_content = True
        else:
            d = ch.get("delta") or {}
            if d.get("role"):
                c.role = d["role"]
            if isinstance(d.get("content"), str):
                c.content.append(d["content"])
                c.has_content = True
            for rk in ("reasoning_content", "reasoning"):
                if isinstance(d.get(rk), str):
                    c.reasoning.append(d[rk])
            if isinstance(d.get("refusal"), str):
                c.refusal = (c.refusal or []) + [d["refusal"]]
            for tc in d.get("tool_calls") or []:
                t = c.tool_calls.setdefault(int(tc.get("index", 0) or 0), _ToolCall())
                if tc.get("id"):
                    t.id = tc["id"]
                if tc.get("type"):
                    t.type = tc["type"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    t.name += fn["name"]
                if isinstance(fn.get("arguments"), str):
                    t.arguments += fn["arguments"]
        lp = ch.get("logprobs")
        if lp:
            if c.logprobs is None:
                c.logprobs = lp
            elif isinstance(lp, dict) and isinstance(c.logprobs, dict):
                for k, v in lp.items():
                    if isinstance(v, list) and isinstance(c.logprobs.get(k), list):
                        c.logprobs[k] = c.logprobs[k] + v
        if ch.get("finish_reason"):
            c.finish_reason = ch["finish_reason"]

    @property
    def complete(self) -> bool:
        return (self.done and not self.error and bool(self.choices)
                and all(c.finish_reason for c in self.choices.values()))

    def assembled(self) -> dict:
        """The non-stream response body equivalent to the recorded stream."""
        body: dict[str, Any] = {
            "id": self.head.get("id", ""),
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
        }
        if self.head.get("system_fingerprint") is not None:
            body["system_fingerprint"] = self.head["system_fingerprint"]
        choices = []
        for idx in sorted(self.choices):
            c = self.choices[idx]
            if self.kind == "completion":
                choices.append({"index": idx, "text": "".join(c.content), "logprobs": c.logprobs,
                                "finish_reason": c.finish_reason})
                continue
            msg: dict[str, Any] = {"role": c.role,
                                   "content": "".join(c.content) if c.has_content or not c.tool_calls else None}
            if c.reasoning:
                msg["reasoning_content"] = "".join(c.reasoning)
            if c.refusal is not None:
                msg["refusal"] = "".join(c.refusal)
            if c.tool_calls:
                msg["tool_calls"] = [
                    {"id": t.id, "type": t.type, "function": {"name": t.name, "arguments": t.arguments}}
                    for _, t in sorted(c.tool_calls.items())
                ]
            choices.append({"index": idx, "message": msg, "logprobs": c.logprobs, "finish_reason": c.finish_reason})
        body["choices"] = choices
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def _pieces(text: str, max_pieces: int = 64) -> list[str]:
    """Split text at word boundaries into at most `max_pieces` deltas."""
    words = re.findall(r"\S+\s*|\s+", text)
    if not words:
        return []
    per = max(1, -(-len(words) // max_pieces))
    return ["".join(words[i:i + per]) for i in range(0, len(words), per)]


def frames_from_body(kind: str, body: dict) -> tuple[list[bytes], bytes | None]:
    """SSE frames replaying a non-stream response: every choice's role, content,
    reasoning, tool calls (with ids, names and argument text), logprobs and finish
    reason, plus the usage frame (sent only when the request asks for it)."""
    head = {"id": body.get("id", ""),
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": body.get("created", 0), "model": body.get("model", "")}
    if body.get("system_fingerprint") is not None:
        head["system_fingerprint"] = body["system_fingerprint"]
    frames: list[bytes] = []
    for ch in body.get("choices") or []:
        idx = ch.get("index", 0)
        if kind == "completion":
            for p in _pieces(ch.get("text") or "") or [""]:
                frames.append(frame({**head, "choices": [{"index": idx, "text": p, "logprobs": None, "finish_reason": None}]}))
            frames.append(frame({**head, "choices": [{"index": idx, "text": "", "logprobs": ch.get("logprobs"),
                                                      "finish_reason": ch.get("finish_reason")}]}))
            continue
        msg = ch.get("message") or {}
        first: dict[str, Any] = {"role": msg.get("role", "assistant"), "content": ""}
        if msg.get("refusal") is not None:
            first["refusal"] = msg["refusal"]
        frames.append(frame({**head, "choices": [{"index": idx, "delta": first, "logprobs": None, "finish_reason": None}]}))
        if msg.get("reasoning_content"):
            frames.append(frame({**head, "choices": [{"index": idx, "delta": {"reasoning_content": msg["reasoning_content"]},
                                                      "logprobs": None, "finish_reason": None}]}))
        for p in _pieces(msg.get("content") or ""):
            frames.append(frame({**head, "choices": [{"index": idx, "delta": {"content": p}, "logprobs": None,
                                                      "finish_reason": None}]}))
        for i, tc in enumerate(msg.get("tool_calls") or []):
            fn = tc.get("function") or {}
            frames.append(frame({**head, "choices": [{"index": idx, "delta": {"tool_calls": [
                {"index": i, "id": tc.get("id"), "type": tc.get("type", "function"),
                 "function": {"name": fn.get("name", ""), "arguments": ""}}]}, "logprobs": None, "finish_reason": None}]}))
            if fn.get("arguments"):
                frames.append(frame({**head, "choices": [{"index": idx, "delta": {"tool_calls": [
                    {"index": i, "function": {"arguments": fn["arguments"]}}]}, "logprobs": None, "finish_reason": None}]}))
        frames.append(frame({**head, "choices": [{"index": idx, "delta": {}, "logprobs": ch.get("logprobs"),
                                                  "finish_reason": ch.get("finish_reason")}]}))
    usage_frame = frame({**head, "choices": [], "usage": body["usage"]}) if body.get("usage") else None
    return frames, usage_frame


def response_is_complete(body: dict) -> bool:
    """A non-stream body worth storing: choices present, each with a finish reason."""
    choices = body.get("choices")
    return bool(choices) and isinstance(choices, list) and all(
        isinstance(c, dict) and c.get("finish_reason") for c in choices)
