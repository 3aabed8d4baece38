"""A run's outputs: results.json, records.jsonl, report.md and PNG plots (matplotlib, Agg).

`results` is the dict `bench/runner.py` builds: `targets` maps a target name ("direct",
"stratacache", peers) to its `scoring.summarize` figures; `comparison` holds the ratios
against "direct". Plots read the records themselves (CDFs need every latency).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.driver import Record

OURS = "stratacache"
DIRECT = "direct"
_STACK = [("L1", "#1f77b4"), ("L2", "#2ca02c"), ("L3", "#9467bd"), ("hit, layer not reported", "#17becf"),
          ("COALESCED", "#ff7f0e"), ("miss", "#d9d9d9"), ("failed", "#d62728")]


def write_all(out: Path, results: dict, records: Sequence[Record]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(out, results, records)
    results["plots"] = [p.name for p in plots]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    with (out / "records.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r.as_dict()) + "\n")
    (out / "report.md").write_text(render_markdown(results))
    return [out / "results.json", out / "records.jsonl", out / "report.md", *plots]


# --------------------------------------------------------------------------- markdown
def _ms(d: dict, key: str = "p50_ms") -> str:
    v = d.get(key)
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}x"


def _cache_targets(results: dict) -> list[str]:
    return [t for t in results["targets"] if t != DIRECT]


def render_markdown(results: dict) -> str:
    sc = results["scenario"]
    targets = results["targets"]
    caches = _cache_targets(results)
    direct = targets.get(DIRECT)
    lines = [f"# Benchmark: {sc['name']}", "", sc.get("description") or "", ""]
    lines += [f"- run: {results.get('started_at', '?')}, {results.get('duration_s', 0):.0f} s; "
              f"command: `{results.get('command', '')}`",
              f"- workload: {results.get('workload', {}).get('summary', '')}",
              f"- backend (simulated): ttft {sc['backend']['ttft_ms']:g} ms, {sc['backend']['tokens_per_s']:g} tokens/s; "
              f"savings priced at a nominal backend of ttft {sc['nominal']['ttft_ms']:g} ms, "
              f"{sc['nominal']['tokens_per_s']:g} tokens/s",
              f"- concurrency {sc['concurrency']}; machine: {results.get('environment', {}).get('summary', '')}", ""]

    head = results.get("headline")
    if head:
        lines += ["## Headline", ""] + [f"- {h}" for h in head] + [""]

    lines += ["## Hit rate and correctness (measured phases)", "",
              "| target | requests | failed | hit rate | L1 | L2 | L3 | coalesced | true hits | false hits | "
              "false-hit rate | recall on same | false hits on different |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in caches:
        s = targets[t]
        m = s["measured"]
        bl, bs = m["by_layer"], m["by_status"]
        lines.append(f"| {t} | {m['requests']} | {s['failed']} | {_pct(m['hit_rate'])} | {bl.get('L1', 0)} | "
                     f"{bl.get('L2', 0)} | {bl.get('L3', 0)} | {bs.get('COALESCED', 0)} | {m['true_hits']} | "
                     f"{m['false_hits']} | {_pct(m['false_hit_rate'])} | {_pct(m['recall_on_same'])} | "
                     f"{m['false_hits_on_different']}/{m['expected_different']} "
                     f"({_pct(m['false_hit_rate_on_different'])}) |")
    lines += ["", "False-hit rate = false hits / measured requests; a hit is false when the answer served was "
              "produced for a request of different meaning (see bench/scoring.py). Recall on same = true hits / "
              "requests whose meaning had been asked before.", ""]
    ours = targets.get(OURS)
    if ours and ours["measured"]["by_kind"]:
        lines += [f"By request kind ({OURS}):", "", "| kind | n | hits | true | false |", "|---|---|---|---|---|"]
        for k, d in ours["measured"]["by_kind"].items():
            lines.append(f"| {k} | {d['n']} | {d['hits']} | {d['true_hits']} | {d['false_hits']} |")
        lines.append("")

    lines += ["## Latency (ms)", "", "| target | requests | all p50 | hit p50 | hit p90 | hit p99 | miss p50 | "
              "miss p99 | TTFT hit p50 | TTFT miss p50 | throughput (req/s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in ([DIRECT] if direct else []) + caches:
        s = targets[t]
        L, T = s["latency"], s["ttft"]
        miss = L["miss"] if t != DIRECT else L["all"]
        tmiss = T["miss"] if t != DIRECT else T["all"]
        lines.append(f"| {t} | {s['requests']} | {_ms(L['all'])} | {_ms(L['hit'])} | {_ms(L['hit'], 'p90_ms')} | "
                     f"{_ms(L['hit'], 'p99_ms')} | {_ms(miss)} | {_ms(miss, 'p99_ms')} | {_ms(T['hit'])} | "
                     f"{_ms(tmiss)} | {s['throughput']['rps'] or '-'} |")
    lines.append("")
    if ours and ours["latency"]["by_layer"]:
        lines += ["Hits by layer: " + ", ".join(f"{k} p50 {_ms(v)} ms (n={v['n']})"
                                                for k, v in ours["latency"]["by_layer"].items()), ""]

    comp = results.get("comparison") or {}
    if comp:
        lines += ["## Against the direct-to-backend baseline", "",
                  "| target | hit p50 / direct p50 | hit p50 / nominal backend | miss p50 / direct p50 | "
                  "miss overhead p50 (ms) | hit TTFT p50 / direct | mean latency speed-up | throughput ratio | "
                  "backend requests ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t, c in comp.items():
            lines.append(f"| {t} | {_x(c['hit_p50_over_direct_p50'])} | {_x(c.get('hit_p50_over_nominal_backend'))} | "
                         f"{_x(c['miss_p50_over_direct_p50'])} | "
                         f"{c['miss_overhead_p50_ms'] if c['miss_overhead_p50_ms'] is not None else '-'} | "
                         f"{_x(c['hit_ttft_p50_over_direct'])} | {_x(c['mean_latency_speedup'])} | "
                         f"{_x(c['throughput_ratio'])} | {_x(c['backend_requests_ratio'])} |")
        lines += ["", f"Nominal backend: {results.get('nominal_backend_ms', '?')} ms per answer (the nominal time "
                  "to first token plus the mean completion at the nominal rate): what a hit is worth in front "
                  "of a realistic backend, where the simulated one is kept fast to keep runs short.", ""]

    lines += ["## Backend work saved", "", "| target | backend requests | backend tokens | tokens saved | "
              "seconds saved (nominal backend) | seconds saved (measured vs direct) |", "|---|---|---|---|---|---|"]
    for t in ([DIRECT] if direct else []) + caches:
        b = targets[t]["backend"]
        lines.append(f"| {t} | {b['requests']} | {b['tokens']} | {b['tokens_saved']} | {b['seconds_saved_nominal']} | "
                     f"{b['seconds_saved_measured'] if b['seconds_saved_measured'] is not None else '-'} |")
    lines += ["", "Nominal seconds: for every answer served without a backend call, the nominal backend's "
              "time to first token plus its completion tokens at the nominal rate.", ""]

    fault = results.get("fault")
    if fault:
        lines += ["## Fault: " + fault["kind"], ""]
        for e in fault["events"]:
            lines.append(f"- {e['t_s']:.1f} s: {e['event']}")
        lines += ["", f"Failed requests: **{fault['failed']}** of {fault['requests']}.", "",
                  "| window | requests | hit rate | failed | p50 ms |", "|---|---|---|---|---|"]
        for name in ("before", "during", "after_first", "after_last"):
            w = fault["windows"].get(name)
            if w:
                lines.append(f"| {name.replace('_', ' ')} ({w['from_s']:.0f}-{w['to_s']:.0f} s) | {w['requests']} | "
                             f"{_pct(w['hit_rate'])} | {w['failed']} | {w['p50_ms'] if w['p50_ms'] is not None else '-'} |")
        lines += ["", fault.get("verdict", ""), ""]

    bursts = results.get("bursts")
    if bursts:
        lines += ["## Bursts", "", "| burst | size | backend requests | statuses |", "|---|---|---|---|"]
        for b in bursts:
            lines.append(f"| {b['burst']} | {b['size']} | {b['backend_requests']} | "
                         + ", ".join(f"{k} {v}" for k, v in b["statuses"].items()) + " |")
        lines.append("")

    peers = results.get("peers")
    if peers:
        lines += ["## Peers", "", "| peer | status | detail |", "|---|---|---|"]
        for name, p in peers.items():
            lines.append(f"| {name} | {p['status']} | {p.get('detail', '')} |")
        lines.append("")

    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax, values: Sequence[float], label: str, **kw) -> None:
    if not values:
        return
    x = np.sort(np.asarray(values) * 1000.0)
    y = np.arange(1, len(x) + 1) / len(x)
    ax.step(x, y, where="post", label=f"{label} (n={len(x)}, p50 {np.median(x):.1f} ms)", **kw)


def write_plots(out: Path, results: dict, records: Sequence[Record]) -> list[Path]:
    plt = _plt()
    by_target: dict[str, list[Record]] = {}
    for r in records:
        by_target.setdefault(r.target, []).append(r)
    caches = _cache_targets(results)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    # Hit rate by layer (measured phases), one bar per cache target.
    if caches:
        fig, ax = plt.subplots(figsize=(10, 1.4 + 0.6 * len(caches)))
        seen: set[str] = set()
        for i, t in enumerate(caches):
            m = results["targets"][t]["measured"]
            n = max(m["requests"], 1)
            parts = dict(m["by_layer"])
            bs = m["by_status"]
            parts["hit, layer not reported"] = max(bs.get("HIT", 0) + bs.get("STALE", 0) - sum(parts.values()), 0)
            parts["COALESCED"] = bs.get("COALESCED", 0)
            parts["failed"] = results["targets"][t]["failed"]
            parts["miss"] = max(m["requests"] - sum(parts.values()), 0)
            left = 0.0
            for key, color in _STACK:
                w = parts.get(key, 0) / n
                if w <= 0:
                    continue
                ax.barh(i, w, left=left, color=color, label=None if key in seen else key)
                seen.add(key)
                if w > 0.04:
                    ax.text(left + w / 2, i, f"{100 * w:.0f}%", ha="center", va="center", fontsize=8)
                left += w
        ax.set_yticks(range(len(caches)),
                      [f"{t}\n{results['targets'][t]['measured']['false_hits']} false hits" for t in caches],
                      fontsize=8)
        ax.set_ylim(-0.6, len(caches) - 0.4)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of measured requests")
        ax.set_title(f"{results['scenario']['name']}: hit rate by layer")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        save(fig, "hit_rate_by_layer.png")

    def cdf_plot(measure, keep, xlabel: str, ylabel: str, title: str, name: str) -> None:
        """Hits and misses per cache target, and the direct baseline, as CDFs of `measure`."""
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for t in caches:
            rs = [r for r in by_target.get(t, []) if r.ok and keep(r)]
            style = "-" if t == OURS else "--"
            _cdf(ax, [measure(r) for r in rs if r.hit], f"{t} hits", ls=style)
            _cdf(ax, [measure(r) for r in rs if r.cache_status in ("MISS", "BYPASS")], f"{t} misses", ls=style)
        _cdf(ax, [measure(r) for r in by_target.get(DIRECT, []) if r.ok and keep(r)], "direct to backend",
             color="k")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        save(fig, name)

    cdf_plot(lambda r: r.latency_s, lambda r: True, "request latency (ms, log)", "fraction of requests",
             "latency CDF", "latency_cdf.png")
    # Time to first token, streams only.
    if any(r.stream and r.ttft_s is not None for r in records):
        cdf_plot(lambda r: r.ttft_s, lambda r: r.stream and r.ttft_s is not None, "time to first token (ms, log)",
                 "fraction of stream requests", "time to first token CDF", "ttft_cdf.png")

    # Throughput: requests per second per phase, and completions over time.
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    targets = [t for t in results["targets"] if by_target.get(t)]
    phases = list(dict.fromkeys(r.phase for r in records))
    if len(phases) > 8:  # e.g. one phase per burst: one bar per target instead
        phases = []
    width = 0.8 / max(len(targets), 1)
    for i, t in enumerate(targets):
        tp = results["targets"][t]["throughput"]
        vals = [tp["by_phase_rps"].get(p, 0) for p in phases] + [tp["rps"] or 0]
        xs = np.arange(len(vals)) + i * width
        ax.bar(xs, vals, width, label=t, color="k" if t == DIRECT else f"C{i}")
    ax.set_xticks(np.arange(len(phases) + 1) + width * (len(targets) - 1) / 2, phases + ["overall"], fontsize=8)
    ax.set_ylabel("requests / s")
    ax.set_title("throughput by phase")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    for i, t in enumerate(targets):
        done = np.sort([r.t_start + r.latency_s for r in by_target[t]])
        ax2.plot(done, np.arange(1, len(done) + 1), label=t, color="k" if t == DIRECT else f"C{i}")
    ax2.set_xlabel("seconds since the target's run began")
    ax2.set_ylabel("requests completed")
    ax2.set_title("completions over time (slope = throughput)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    save(fig, "throughput.png")

    # Backend work: requests, tokens, seconds saved.
    names = [t for t in results["targets"]]
    if names:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        b = [results["targets"][t]["backend"] for t in names]
        colors = ["k" if t == DIRECT else f"C{i}" for i, t in enumerate(names)]
        axes[0].bar(names, [x["requests"] for x in b], color=colors)
        axes[0].set_title("backend requests")
        axes[1].bar(names, [x["tokens"] for x in b], color=colors)
        axes[1].set_title("backend tokens (prompt + completion)")
        axes[2].bar(names, [x["seconds_saved_nominal"] for x in b], color=colors)
        axes[2].set_title("backend seconds saved (nominal backend)")
        for ax in axes:
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
            ax.grid(alpha=0.3, axis="y")
        save(fig, "backend_saved.png")

    # Hit rate over time, with fault events.
    fault = results.get("fault")
    tl = results.get("timelines", {}).get(OURS)
    if tl and (fault or results["workload"].get("kind") == "zipf"):
        fig, ax = plt.subplots(figsize=(9, 4))
        xs = [w["t_s"] for w in tl]
        ax.plot(xs, [w["hit_rate"] or 0 for w in tl], marker=".", label="hit rate")
        fails = [(w["t_s"], w["failed"] / w["requests"]) for w in tl if w["failed"]]
        if fails:
            ax.scatter(*zip(*fails), color="C3", label="failed share", zorder=3)
        for e in (fault or {}).get("events", []):
            ax.axvline(e["t_s"], color="C3" if "kill" in e["event"] else "C2", ls="--", lw=1)
            ax.text(e["t_s"], 1.02, e["event"], fontsize=7, ha="center")
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("seconds since the run began")
        ax.set_ylabel(f"hit rate per {results.get('timeline_window_s', 1):g} s window")
        ax.set_title(f"{OURS}: hit rate over time")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        save(fig, "hit_rate_timeline.png")

    # Peers side by side.
    if len(caches) > 1:
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
        t = results["targets"]
        axes[0].bar(caches, [t[c]["latency"]["hit"].get("p50_ms") or 0 for c in caches])
        axes[0].set_title("hit latency p50 (ms)")
        axes[1].bar(caches, [t[c]["throughput"]["rps"] or 0 for c in caches])
        axes[1].set_title("throughput (req/s)")
        axes[2].bar(caches, [t[c]["measured"]["hit_rate"] or 0 for c in caches])
        axes[2].set_title("hit rate")
        axes[3].bar(caches, [t[c]["measured"]["false_hits"] for c in caches], color="C3")
        axes[3].set_title("false hits")
        for ax in axes:
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
            ax.grid(alpha=0.3, axis="y")
        save(fig, "peers.png")
    return written
