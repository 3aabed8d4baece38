"""Generation over a local Hugging Face causal LM with continuous batching.

One `HFEngine` owns the model. Requests wait in a bounded queue; a scheduler task admits
them between decode steps into the running batch (up to `max_batch` rows; one row per
choice), so a new request joins while others are mid-generation and a finished or
cancelled row leaves at once. All tensor work runs in one worker thread; the event loop
only moves events.

How a batch stays exact. Every new request is prefilled alone (no padding), so its prompt
is processed exactly as in a solo run. Its KV cache then joins the batch's cache,
left-padded with zeros to the common length; the 2-D attention mask hides the padding
and explicit `position_ids` (the count of real tokens per row) keep positions as in a solo
run. Each decode step feeds every row its last token in one forward pass. Sampling is
per row with its own `torch.Generator` seeded from `seed` (+ choice index), one draw per
token, so for greedy decoding or a fixed seed a request yields the same tokens batched
or alone (up to float rounding of batched kernels; fp32 on CPU). Models whose cache is
not a plain `DynamicCache` (sliding-window layers, ...) run one row at a time.

Events per request (`Generation.events()`): `TextDelta`, `Finished` per choice, or one
`Failed`. Cancelling a `Generation` (client gone) drops its rows before the next step.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend.hf_batch import RunningBatch
from backend.hf_detokenizer import IncrementalDetokenizer
from backend.openai_format import (
    FinishReason, GenerationRequest, RequestError, cut_at_stop, held_back, message_text,
)

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096
"""Context length assumed when a model's config names none."""

PLAIN_TEMPLATE_NOTE = """Without a chat template, messages are rendered as
"<role>: <content>\\n" per message followed by "assistant:" (the plain fallback)."""


class ModelLoadError(RuntimeError):
    """The model directory could not be loaded (missing, not a causal LM, unreadable)."""


class EngineOverloaded(RuntimeError):
    """The waiting queue is full; the server answers 503."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    index: int
    finish_reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Failed:
    message: str


Event = TextDelta | Finished | Failed


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


class Generation:
    """The handle of one submitted request: its events, and `cancel()`."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, n: int) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.n = n
        self.cancelled = False
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._open = n

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def cancel(self) -> None:
        self.cancelled = True

    def _put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    async def events(self):
        """Yields events until every choice has finished or the request failed."""
        while self._open > 0:
            event = await self._queue.get()
            yield event
            if isinstance(event, Failed):
                return
            if isinstance(event, Finished):
                self._open -= 1


# ---------------------------------------------------------------- loading


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA device is available")
    if device not in ("cuda", "cpu"):
        raise ModelLoadError(f"unknown device {device!r} (auto, cuda or cpu)")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    named = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype in named:
        return named[dtype]
    if dtype != "auto":
        raise ModelLoadError(f"unknown dtype {dtype!r} (auto, bf16, fp16 or fp32)")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(path: str, device: str = "auto", dtype: str = "auto"):
    """Load (model, tokenizer, device) from a local directory; never touches the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"model path {path!r} is not a directory")
    if not (root / "config.json").is_file():
        raise ModelLoadError(f"model path {path!r} has no config.json: not a Hugging Face model")
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(root, local_files_only=True,
                                                     dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load a causal LM from {path!r}: {exc}") from exc
    return model.to(dev).eval(), tokenizer, dev


@dataclass(eq=False)
class _Row:
    """One choice being generated."""

    gen: Generation
    index: int
    generator: torch.Generator | None
    detok: IncrementalDetokenizer
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    done: bool = False


# ---------------------------------------------------------------- the engine


class HFEngine:
    """Owns one model; `submit()` requests, `run()` the scheduler (one task per engine)."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, *,
                 max_batch: int = 8, max_queue: int = 256) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.context = _context_length(model.config)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._batchable: bool | None = None  # known after the first prefill
        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._waiting: collections.deque[Generation] = collections.deque()
        self._wakeup = asyncio.Event()
        self._batch: RunningBatch[_Row] = RunningBatch()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        self.requests = 0
        self.cancelled = 0
        self.peak_rows = 0

    @classmethod
    def load(cls, path: str, device: str = "auto", dtype: str = "auto", *,
             max_batch: int = 8, max_queue: int = 256) -> "HFEngine":
        model, tokenizer, dev = load_model(path, device, dtype)
        return cls(model, tokenizer, dev, max_batch=max_batch, max_queue=max_queue)

    # -- the request side (event loop)

    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        if req.messages is None:
            return list(tok(req.prompt, add_special_tokens=True)["input_ids"])
        messages = [{"role": m["role"], "content": message_text(m)} for m in req.messages]
        if getattr(tok, "chat_template", None):
            try:
                text = tok.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=False)
            except Exception as exc:  # jinja raises for conversations a template refuses
                raise RequestError(f"the chat template rejected the messages: {exc}",
                                   param="messages") from exc
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return list(tok(text, add_special_tokens=True)["input_ids"])

    def submit(self, req: GenerationRequest, *, ignore_eos: bool = False) -> Generation:
        """Queue a request; raises `RequestError` (too long) or `EngineOverloaded`."""
        ids = self.prompt_ids(req)
        if not ids:
            raise RequestError("the prompt is empty after tokenisation", param="prompt")
        room = self.context - len(ids)
        if room < 1:
            raise RequestError(
                f"the prompt has {len(ids)} tokens; this model's context is {self.context}",
                code="context_length_exceeded")
        if req.max_tokens is not None and req.max_tokens > room:
            raise RequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({req.max_tokens}) exceeds this "
                f"model's context of {self.context} tokens", param="max_tokens",
                code="context_length_exceeded")
        if len(self._waiting) >= self.max_queue:
            raise EngineOverloaded(f"{len(self._waiting)} requests are waiting; try again later")
        params = SamplingParams(max_tokens=room if req.max_tokens is None else req.max_tokens,
                                temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                                stop=req.stop, ignore_eos=ignore_eos)
        gen = Generation(ids, params, req.n)
        self._waiting.append(gen)
        self.requests += 1
        self._wakeup.set()
        return gen

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "running": len(self._batch.rows),
                "waiting": len(self._waiting), "cancelled": self.cancelled,
                "peak_running": self.peak_rows, "max_batch": self.max_batch}

    async def run(self) -> None:
        """The scheduler: admit, step, deliver events; forever (cancel the task to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            admitted = self._admit()
            if not admitted and not self._batch.rows:
                self._wakeup.clear()
                if not self._waiting:
                    await self._wakeup.wait()
                continue
            try:
                events = await loop.run_in_executor(self._executor, self._step, admitted)
            except Exception as exc:  # an engine fault fails the requests in flight, not the server
                log.exception("generation step failed")
                failed = {r.gen for r in self._batch.rows} | set(admitted)
                self._batch: RunningBatch[_Row] = RunningBatch()
                events = [(g, Failed(f"generation failed: {exc}")) for g in failed]
            for gen, event in events:
                gen._put(event)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _admit(self) -> list[Generation]:
        limit = self.max_batch if self._batchable is not False else 1
        used = len(self._batch.rows)
        admitted: list[Generation] = []
        while self._waiting:
            gen = self._waiting[0]
            if gen.cancelled:
                self._waiting.popleft()
                self.cancelled += 1
                continue
            if used + gen.n > limit and (used or admitted):
                break
            admitted.append(self._waiting.popleft())
            used += gen.n
            if self._batchable is None:
                break  # learn from the first prefill whether rows can share a batch
        return admitted

    # -- the worker thread

    @torch.inference_mode()
    def _step(self, admitted: list[Generation]) -> list[tuple[Generation, Event]]:
        events: list[tuple[Generation, Event]] = []
        batch = self._batch
        live = [i for i, r in enumerate(batch.rows) if not r.gen.cancelled]
        self.cancelled += len({r.gen for r in batch.rows if r.gen.cancelled})
        batch.keep(live)
        if batch.rows:
            inputs = batch.decode_inputs([r.tokens[-1] for r in batch.rows], self.device)
            out = self.model(**inputs)
            batch.stepped(out.past_key_values, inputs["attention_mask"])
            self._advance(batch.rows, out.logits[:, -1, :], events)
        for gen in admitted:
            try:
                rows, cache, mask, logits = self._prefill(gen)
                self._advance(rows, logits, events)
            except Exception as exc:  # one bad request must not take the batch down
                log.exception("prefill failed")
                events.append((gen, Failed(f"generation failed: {exc}")))
                continue
            batch.add(rows, cache, mask)
        batch.keep([i for i, r in enumerate(batch.rows) if not r.done])
        self.peak_rows = max(self.peak_rows, len(batch.rows))
        return events

    def _prefill(self, gen: Generation):
        from transformers import DynamicCache, DynamicLayer

        ids = torch.tensor([gen.prompt_ids], device=self.device)
        cache = DynamicCache(config=self.model.config)
        kwargs = {"logits_to_keep": 1} if self._keep_logits else {}
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                         past_key_values=cache, use_cache=True, **kwargs)
        cache = out.past_key_values
        if self._batchable is None:
            self._batchable = all(type(layer) is DynamicLayer
                                  for layer in getattr(cache, "layers", [None]))
            if not self._batchable:
                log.warning("this model's KV cache is not a plain DynamicCache: one row at a time")
        if gen.n > 1:
            cache.batch_repeat_interleave(gen.n)
        logits = out.logits[:, -1, :].expand(gen.n, -1)
        mask = torch.ones((gen.n, ids.shape[1]), dtype=torch.long, device=self.device)
        rows = []
        for i in range(gen.n):
            g = None
            if gen.params.temperature > 0:
                g = torch.Generator(device="cpu")
                if gen.params.seed is None:
                    g.seed()
                else:
                    g.manual_seed(gen.params.seed + i)
            rows.append(_Row(gen, i, g, IncrementalDetokenizer(self.tokenizer, gen.prompt_ids)))
        return rows, cache, mask, logits

    def _advance(self, rows: list[_Row], logits: torch.Tensor, events: list) -> None:
        greedy = logits.argmax(-1).tolist()
        for j, row in enumerate(rows):
            token = greedy[j] if row.generator is None else _sample(logits[j], row)
            self._accept(row, token, events)

    def _accept(self, row: _Row, token: int, events: list) -> None:
        p = row.gen.params
        row.tokens.append(token)
        if token in self.eos_ids and not p.ignore_eos:
            return self._finish(row, "stop", row.detok.flush(), events)
        new = row.detok.add(token)
        if len(row.tokens) >= p.max_tokens:
            return self._finish(row, "length", new + row.detok.flush(), events)
        if new:
            self._extend(row, new, events)

    def _extend(self, row: _Row, new: str, events: list) -> bool:
        """Append text; emit what can no longer turn into a stop string. True on a stop."""
        stop = row.gen.params.stop
        start = max(0, len(row.text) - max((len(s) for s in stop), default=0) + 1)
        row.text += new
        if stop:
            cut, hit = cut_at_stop(row.text[start:], stop)
            if hit:
                row.text = row.text[:start] + cut
                self._emit(row, len(row.text), events)
                row.done = True
                events.append((row.gen, Finished(row.index, "stop", len(row.tokens))))
                return True
        self._emit(row, len(row.text) - held_back(row.text, stop), events)
        return False

    def _emit(self, row: _Row, upto: int, events: list) -> None:
        if upto > row.sent:
            events.append((row.gen, TextDelta(row.index, row.text[row.sent:upto])))
            row.sent = upto

    def _finish(self, row: _Row, reason: FinishReason, tail: str, events: list) -> None:
        if tail and self._extend(row, tail, events):
            return
        self._emit(row, len(row.text), events)
        row.done = True
        events.append((row.gen, Finished(row.index, reason, len(row.tokens))))


def _sample(logits: torch.Tensor, row: _Row) -> int:
    p = row.gen.params
    x = logits.float().cpu() / p.temperature
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, -1)
        drop = probs.cumsum(-1) - probs > p.top_p  # keep the smallest set reaching top_p
        drop[0] = False
        x = x.scatter(0, order[drop], float("-inf"))
    return int(torch.multinomial(torch.softmax(x, -1), 1, generator=row.generator))


def _context_length(config: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
