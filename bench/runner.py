"""One benchmark run: build the workload, start (or target) the processes, drive the
direct baseline, the proxy and any peers with the same requests, inject the scenario's
fault, score and write the report."""
from __future__ import annotations

import asyncio
import os
import platform
import secrets
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import scoring
from bench.datasets import DataError, load_conversations, load_pairs, load_texts, resolve_data_path
from bench.driver import Driver, Record
from bench.processes import ProcessGroup, RedisChild
from bench.report import DIRECT, OURS, write_all
from bench.scenario import Scenario
from bench.workloads import MODEL, Phase, bursts, exact_repeats, labelled_pairs, multi_turn, zipf_mix

TIMELINE_WINDOW_S = 2.0
WARMUP_REQUESTS = 4


@dataclass
class RunOptions:
    out: Path
    backend_url: str | None = None   # target an existing backend instead of starting one
    proxy_url: str | None = None     # target an existing proxy (no fault injection then)
    data: str | None = None
    limit: int | None = None
    count: int | None = None
    concurrency: int | None = None
    peers: bool = True
    direct: bool = True
    quiet: bool = False
    command: str = ""
    notes: list[str] = field(default_factory=list)
    proxy_overrides: dict = field(default_factory=dict)  # merged over the scenario's proxy config


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """`semantic.threshold=0.93` -> {"semantic": {"threshold": 0.93}} (values parsed as YAML)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


# --------------------------------------------------------------------------- workload
def build_workload(sc: Scenario, opts: RunOptions) -> tuple[list[Phase], dict]:
    w = sc.workload
    limit = opts.limit if opts.limit is not None else w.limit
    count = opts.count if opts.count is not None else w.count
    common = {"stream": w.stream, "seed": w.seed, "max_tokens": w.max_tokens}
    info: dict = {"kind": w.kind}
    data = opts.data or w.data
    if w.kind == "exact":
        phases = exact_repeats(prompts=w.prompts, count=count, **common)
        info["summary"] = f"{w.prompts} distinct prompts seeded, then {count} exact repeats"
    elif w.kind == "pairs":
        path = resolve_data_path(data or "qqp-val/pairs.csv")
        pairs = load_pairs(path)
        phases = labelled_pairs(pairs, limit=limit, repeats=w.repeats, **common)
        probes = [s for s in phases[1].steps if s.kind != "repeat"]
        n_same = sum(s.expect == "same" for s in probes)
        info.update(data=str(path), pairs_in_file=len(pairs), sampled=len(probes))
        info["summary"] = (f"{len(probes)} labelled pairs sampled from {path.name} ({n_same} same, "
                           f"{len(probes) - n_same} different): seed a, then ask b"
                           + (f", mixed with {w.repeats} exact repeats of seeded a" if w.repeats else ""))
    elif w.kind == "multi-turn":
        path = resolve_data_path(data or "contextual-queries/new_claude.json")
        convs = load_conversations(path)
        fu_path = w.followups or str(path.parent / "unique_u1.json")
        try:
            generic = load_texts(resolve_data_path(fu_path))
        except DataError:
            generic = []
        phases = multi_turn(convs, generic, limit=limit, **common)
        info.update(data=str(path), followups=fu_path if generic else None, conversations=len(convs))
        info["notes"] = ["The contract figure is `generic-other-context`: a generic follow-up asked in one "
                         "conversation must never be served an answer cached in another (hits there are false).",
                         "Judging is conservative: the data does not link conversations on the same topic "
                         "(e.g. two photosynthesis conversations), so a reworded first turn served the other "
                         "one's answer counts as a false hit; records.jsonl has every case."]
        info["summary"] = (f"{len(phases[0].steps) // 3} distinct conversations (of {len(convs)} in {path.name}), "
                           f"{len(generic)} generic follow-ups: {len(phases[0].steps)} seed requests, "
                           f"{len(phases[1].steps)} probes")
    elif w.kind == "zipf":
        variants = novel = None
        source = "synthetic tasks x phrasings"
        if data:
            path = resolve_data_path(data)
            pairs = load_pairs(path)
            same = [p for p in pairs if p.label == 1]
            variants = [[p.a, p.b] for p in same[:w.prompts]]
            used = {t for v in variants for t in v}
            novel = [p.a for p in pairs if p.label == 0 and p.a not in used][:count]
            source = f"pairs labelled same in {path.name} (topic = a, paraphrase = b)"
        phases = zipf_mix(topics=w.prompts, count=count, s=w.zipf_s, mix=w.mix, variants=variants, novel=novel,
                          rate=w.rate, **common)
        kinds = Counter(s.kind for s in phases[0].steps)
        info.update(source=source, kinds=dict(kinds))
        info["summary"] = (f"{count} requests, Zipf(s={w.zipf_s}) over {w.prompts} topics from {source}; mix "
                           + ", ".join(f"{k} {v}" for k, v in kinds.items())
                           + (f"; open loop at {w.rate:g} req/s" if w.rate else ""))
    elif w.kind == "burst":
        phases = bursts(count=count, size=w.burst_size, **common)
        info["summary"] = f"{count} bursts of {w.burst_size} identical requests sent at once, then each prompt again"
    else:  # pragma: no cover - the scenario model rejects other kinds
        raise ValueError(w.kind)
    info["phases"] = [{"name": p.name, "requests": len(p.steps), "measure": p.measure} for p in phases]
    return phases, info


# --------------------------------------------------------------------------- progress
class _Progress:
    """Rich progress bars (one per target), or nothing when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        if not quiet:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True))

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def log(self, msg: str) -> None:
        if self.bar:
            self.bar.console.log(msg)

    def task(self, name: str, total: int):
        if not self.bar:
            return lambda rec: None
        tid = self.bar.add_task(name, total=total, info="")
        counts = Counter()

        def advance(rec: Record) -> None:
            counts["failed" if not rec.ok else (rec.cache_status or "ok")] += 1
            self.bar.update(tid, advance=1, info=" ".join(f"{k}:{v}" for k, v in sorted(counts.items())))

        return advance


# --------------------------------------------------------------------------- running
async def _backend_count(url: str | None) -> int | None:
    if not url:
        return None
    try:
        async with httpx.AsyncClient(timeout=5) as c:
            return int((await c.get(url + "/stats")).json()["requests"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def warm_up(base_url: str, headers: dict) -> None:
    """A few throwaway requests (through the proxy: under another tenant) so that
    first-request costs are not measured."""
    async with httpx.AsyncClient(timeout=120, headers=headers) as c:
        for i in range(WARMUP_REQUESTS):  # each text twice: the miss and the hit paths both run
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"warm-up request {i // 2}"}]}
            try:
                await c.post(base_url + "/chat/completions", json=body)
            except httpx.HTTPError:
                pass


async def drive_target(name: str, base_url: str, phases: list[Phase], concurrency: int, progress: _Progress, *,
                       headers: dict | None = None, backend_url: str | None = None, header_map=None,
                       during=None) -> dict:
    """Run every phase against one target; returns records, wall time per phase, the
    backend requests counted during the run, and per-phase backend counts."""
    driver = Driver(base_url, name, headers=headers, concurrency=concurrency, header_map=header_map)
    walls: dict[str, float] = {}
    phase_backend: dict[str, int | None] = {}
    before = await _backend_count(backend_url)
    last = [before]
    advance = progress.task(name, sum(len(p.steps) for p in phases))

    async def phase_done(phase: Phase, start: float, end: float) -> None:
        walls[phase.name] = end - start
        now = await _backend_count(backend_url)
        phase_backend[phase.name] = None if now is None or last[0] is None else now - last[0]
        last[0] = now

    extra = asyncio.ensure_future(during(driver)) if during else None
    try:
        records = await driver.run(phases, on_done=advance, on_phase=phase_done)
    finally:
        if extra:
            await extra
    after = await _backend_count(backend_url)
    total = None if before is None or after is None else after - before
    return {"records": records, "walls": walls, "backend_requests": total, "phase_backend": phase_backend}


def _fault_summary(records: list[Record], events: list[dict], sc: Scenario) -> dict:
    kill = next((e["t_s"] for e in events if "killed" in e["event"]), None)
    back = next((e["t_s"] for e in events if "back" in e["event"]), None)
    end = max((r.t_start for r in records), default=0.0)

    def window(a: float, b: float) -> dict | None:
        rs = [r for r in records if a <= r.t_start < b]
        if not rs:
            return None
        ok = [r for r in rs if r.ok]
        return {"from_s": a, "to_s": b, "requests": len(rs), "failed": len(rs) - len(ok),
                "hit_rate": round(sum(r.hit for r in ok) / len(rs), 4),
                "p50_ms": scoring.percentiles([r.latency_s for r in ok]).get("p50_ms")}

    windows: dict = {}
    if kill is not None and back is not None:
        windows["before"] = window(0.0, kill)
        windows["during"] = window(kill, back)
        third = (end - back) / 3
        windows["after_first"] = window(back, back + third)
        windows["after_last"] = window(end - third, end + 1e-9)
    failed = sum(not r.ok for r in records)
    verdict = ""
    b, last = windows.get("before"), windows.get("after_last")
    if b and last:
        recovered = last["hit_rate"] >= 0.8 * b["hit_rate"]
        verdict = (f"{'0 failed requests' if failed == 0 else f'{failed} FAILED requests'}; hit rate "
                   f"{100 * b['hit_rate']:.0f}% before, {100 * (windows['during'] or {}).get('hit_rate', 0):.0f}% "
                   f"while Redis was down, {100 * last['hit_rate']:.0f}% in the last third after it came back "
                   f"({'recovered' if recovered else 'NOT recovered'}).")
    return {"kind": sc.fault.kind if sc.fault else "", "events": events, "requests": len(records),
            "failed": failed, "windows": windows, "verdict": verdict}


def _bursts(records: list[Record], phases: list[Phase], phase_backend: dict) -> list[dict]:
    out = []
    for p in phases:
        if "burst" not in p.notes:
            continue
        rs = [r for r in records if r.phase == p.name]
        out.append({"burst": p.notes["burst"], "size": len(p.steps), "backend_requests": phase_backend.get(p.name),
                    "statuses": dict(Counter(r.cache_status or ("ok" if r.ok else "failed") for r in rs))})
    return out


def _headline(results: dict) -> list[str]:
    t = results["targets"]
    out = []
    for name in [n for n in t if n != DIRECT]:
        s = t[name]
        m = s["measured"]
        c = results["comparison"].get(name, {})
        coalesced = m["by_status"].get("COALESCED", 0)
        line = (f"{name}: hit rate {100 * (m['hit_rate'] or 0):.1f}%"
                + (f" (+{100 * coalesced / max(m['requests'], 1):.1f}% coalesced)" if coalesced else "")
                + f" ({m['true_hits']} true, {m['false_hits']} false; "
                f"false-hit rate {100 * (m['false_hit_rate'] or 0):.2f}%), {s['failed']} failed")
        if s["latency"]["hit"].get("n"):
            line += f"; hit p50 {s['latency']['hit']['p50_ms']:.1f} ms"
            if DIRECT in t and t[DIRECT]["latency"]["all"].get("n"):
                line += (f" vs direct p50 {t[DIRECT]['latency']['all']['p50_ms']:.1f} ms "
                         f"({c.get('hit_p50_over_direct_p50')}x)")
        line += (f"; backend requests {s['backend']['requests']}"
                 + (f" vs {t[DIRECT]['backend']['requests']} direct" if DIRECT in t else "")
                 + f"; {s['backend']['seconds_saved_nominal']} s of nominal backend time saved")
        out.append(line)
    if results.get("fault", {}).get("verdict"):
        out.append(results["fault"]["verdict"])
    return out


def _environment() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    cpus = os.cpu_count()
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": cpus,
            "load_avg_at_start": [round(x, 2) for x in load],
            "summary": f"{cpus} CPUs, load average {load[0]:.1f} at start, Python {sys.version.split()[0]}"}


async def _run(sc: Scenario, opts: RunOptions, progress: _Progress) -> dict:
    phases, info = build_workload(sc, opts)
    concurrency = opts.concurrency or sc.concurrency
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t_run = time.perf_counter()
    logs = opts.out / "logs"
    token = f"bench-{secrets.token_hex(6)}"  # a fresh tenant: nothing cached before this run can hit
    results: dict = {"scenario": sc.model_dump(), "command": opts.command, "started_at": started,
                     "environment": _environment(), "workload": info, "targets": {}, "comparison": {},
                     "timelines": {}, "timeline_window_s": TIMELINE_WINDOW_S,
                     "notes": list(opts.notes) + info.pop("notes", [])}
    all_records: list[Record] = []
    with ProcessGroup(logs) as group:
        backend_url = opts.backend_url
        if backend_url is None:
            progress.log(f"starting simulated backend (ttft {sc.backend.ttft_ms:g} ms, {sc.backend.tokens_per_s:g} tok/s)")
            backend_url = await asyncio.to_thread(group.backend, sc.backend.ttft_ms, sc.backend.tokens_per_s)
        redis: RedisChild | None = None
        proxy_url = opts.proxy_url
        if proxy_url is None:
            redis = await asyncio.to_thread(group.redis)
            config = deep_merge({"log_level": "warning", **sc.proxy}, opts.proxy_overrides)
            results["proxy_config"] = config
            progress.log(f"starting proxy (redis {redis.url}); loading the embedder can take a minute")
            proxy_url = await asyncio.to_thread(group.proxy, backend_url, config, redis_url=redis.url)
        elif sc.fault:
            results["notes"].append("fault not injected: the proxy was given by URL")
        headers_sim = {"X-Sim-Answer-Tokens": str(sc.backend.answer_tokens)}
        direct = None
        if opts.direct and sc.direct_baseline:
            await warm_up(backend_url + "/v1", headers_sim)
            progress.log("direct-to-backend baseline")
            direct = await drive_target(DIRECT, backend_url + "/v1", phases, concurrency, progress,
                                        headers=headers_sim, backend_url=backend_url)
            all_records += direct["records"]

        await warm_up(proxy_url + "/v1", {**headers_sim, "Authorization": "Bearer bench-warmup"})
        events: list[dict] = []

        async def fault(driver: Driver) -> None:
            f = sc.fault
            if f is None or redis is None:
                return
            await asyncio.sleep(f.kill_at_s)
            await asyncio.to_thread(redis.kill)
            events.append({"t_s": round(time.perf_counter() - driver.t0, 2), "event": "redis killed (SIGKILL)"})
            progress.log("redis-server killed")
            await asyncio.sleep(f.down_s)
            await asyncio.to_thread(redis.start)
            events.append({"t_s": round(time.perf_counter() - driver.t0, 2), "event": "redis back (empty)"})
            progress.log("redis-server restarted")

        progress.log(f"{OURS} at {proxy_url}")
        ours = await drive_target(OURS, proxy_url + "/v1", phases, concurrency, progress,
                                  headers={**headers_sim, "Authorization": f"Bearer {token}"},
                                  backend_url=backend_url, during=fault)
        all_records += ours["records"]
        runs = {OURS: ours}
        if sc.peers and opts.peers:
            from bench.peers import run_peers

            peer_runs, peer_status = await run_peers(sc, phases, backend_url, opts.out, group, progress,
                                                     concurrency, headers_sim, results.get("proxy_config"))
            results["peers"] = peer_status
            for name, run in peer_runs.items():
                runs[name] = run
                all_records += run["records"]
        elif sc.peers:
            results["peers"] = {p: {"status": "skipped", "detail": "--no-peers"} for p in sc.peers}

    results["processes"] = group.started
    groups = scoring.answer_groups(all_records)
    tokens = scoring.answer_tokens(all_records)
    nominal = {"nominal_ttft_ms": sc.nominal.ttft_ms, "nominal_tokens_per_s": sc.nominal.tokens_per_s,
               "tokens_by_answer": tokens}
    direct_latency = None
    completions = [r.completion_tokens for r in all_records if r.ok and r.completion_tokens]
    nominal_ms = sc.nominal.ttft_ms + (1000.0 * sum(completions) / len(completions) / sc.nominal.tokens_per_s
                                       if completions else 0.0)
    results["nominal_backend_ms"] = round(nominal_ms, 1)
    if direct is not None:
        results["targets"][DIRECT] = scoring.summarize(direct["records"], groups, phase_walls=direct["walls"],
                                                       backend_requests=direct["backend_requests"], **nominal)
        direct_latency = {r.index: r.latency_s for r in direct["records"] if r.ok}
    for name, run in runs.items():
        results["targets"][name] = scoring.summarize(run["records"], groups, phase_walls=run["walls"],
                                                     direct_latency=direct_latency,
                                                     backend_requests=run["backend_requests"], **nominal)
        results["timelines"][name] = scoring.timeline(run["records"], TIMELINE_WINDOW_S)
        if direct is not None:
            results["comparison"][name] = scoring.comparison(results["targets"][name], results["targets"][DIRECT],
                                                             nominal_ms)
    if sc.fault:
        results["fault"] = _fault_summary(ours["records"], events, sc)
    if sc.workload.kind == "burst":
        results["bursts"] = _bursts(ours["records"], phases, ours["phase_backend"])
    results["duration_s"] = round(time.perf_counter() - t_run, 1)
    results["headline"] = _headline(results)
    write_all(opts.out, results, all_records)
    return results


def run_scenario(sc: Scenario, opts: RunOptions) -> dict:
    if not opts.command:
        opts.command = "stratacache " + shlex.join(sys.argv[1:])
    with _Progress(opts.quiet) as progress:
        return asyncio.run(_run(sc, opts, progress))
