"""Precision of the semantic layer: false-hit rate and hit rate, raw vs verified vs calibrated.

    python -m bench.precision [--pairs PATH] [--traps-dev PATH] [--traps-holdout PATH]
                              [--target 0.02] [--out out/precision]

Protocol (written into report.md as well):

* Pairs are (cached text, query text, same meaning?). The hit rate is the share of
  same-meaning pairs served; the false-hit rate (FHR) the share of different-meaning pairs
  served.
* The labelled pairs file (QQP-style) is split by a seeded shuffle into a tuning half and
  a held-out half. Every default (thresholds, calibration knobs) is chosen on the tuning
  half only, as the lowest threshold whose upper 90% confidence bound of the FHR stays
  under --target; the held-out half and the hold-out traps are measured once.
* (a) static: serve when cosine >= t.  (b) + verification: and `policies.verification`
  passes.  (c) + calibration: `policies.calibration.decide` with a threshold per
  neighbourhood, starting from (b)'s threshold.
* Calibration is simulated as a cache that fills while queries stream in (seeded order):
  question1 is the cached entry, question2 the query. Evidence is revealed as it would be
  in production: every candidate above the consider threshold that is *not* served gets a
  fresh upstream answer, whose comparison with the cached answer (an exact-match
  confirmation) reveals the label; served hits are audited by an off-path judge with
  probability --audit. The label stands in for a perfect comparison. A decision pools the
  evidence of cached entries within --radius cosine of the query (weighted by closeness).
  The "warm" variant first streams the tuning half as history (its labels revealed the
  same way) then measures the held-out half.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.calibration import Evidence, GlobalCalibrator, GlobalPrior, decide, false_hit_upper_bound
from policies.verification import verify

SEED = 20240501
DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp-val" / "pairs.csv"
DATA = Path(__file__).resolve().parent / "data"


@dataclass
class Pairs:
    a: list[str]           # cached text
    b: list[str]           # query text
    y: np.ndarray          # 1 same meaning
    kind: list[str]
    sim: np.ndarray = None  # cosine
    ok: np.ndarray = None   # verification passed
    reason: list[str] = None
    ea: np.ndarray = None   # embeddings of a
    eb: np.ndarray = None


def load_pairs(path: Path) -> Pairs:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return Pairs([r["question1"] for r in rows], [r["question2"] for r in rows],
                 np.array([int(r["is_duplicate"]) for r in rows]), ["qqp"] * len(rows))


def load_traps(path: Path) -> Pairs:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    return Pairs([r["a"] for r in rows], [r["b"] for r in rows],
                 np.array([int(r["label"]) for r in rows]), [r["kind"] for r in rows])


class Embeddings:
    """Encodes texts once with the engine the proxy itself would embed with (the product's
    loader: on a CPU, the ONNX int8 export of the shipped all-MiniLM-L6-v2), so the figures
    are the product's, not torch's; keeps vectors in memory."""

    def __init__(self, engine: str = "auto") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from embeddings.loader import EmbedderConfig, load_backend

        self.backend = load_backend(EmbedderConfig(engine=engine))
        self.engine = self.backend.engine
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self.cache})
        for start in range(0, len(todo), 256):
            chunk = todo[start:start + 256]
            self.cache.update(zip(chunk, np.asarray(self.backend.encode(chunk), dtype=np.float32)))
        return np.stack([self.cache[t] for t in texts])


def prepare(p: Pairs, emb: Embeddings) -> Pairs:
    p.ea, p.eb = emb.encode(p.a), emb.encode(p.b)
    p.sim = (p.ea * p.eb).sum(1)
    verdicts = [verify(q, c) for c, q in zip(p.a, p.b)]
    p.ok = np.array([v.ok for v in verdicts])
    p.reason = [v.reason for v in verdicts]
    return p


def rates(served: np.ndarray, y: np.ndarray) -> dict:
    pos, neg = y == 1, y == 0
    return {"hit_rate": float(served[pos].mean()) if pos.any() else 0.0,
            "false_hit_rate": float(served[neg].mean()) if neg.any() else 0.0,
            "hits": int(served[pos].sum()), "false_hits": int(served[neg].sum()),
            "positives": int(pos.sum()), "negatives": int(neg.sum())}


def pick_threshold(sim: np.ndarray, eligible: np.ndarray, y: np.ndarray, target: float,
                   floor: float) -> float:
    """Lowest threshold whose FHR upper bound (90%) is <= target, on these pairs."""
    cal = GlobalCalibrator(max_false_hit_rate=target, consider_threshold=floor)
    cal.add(sim.tolist(), y.tolist(), eligible.tolist())
    return cal.threshold_for(target)


def best_static(sim: np.ndarray, y: np.ndarray, max_fhr: float) -> tuple[float, dict]:
    """Oracle: the static threshold with most hits whose measured FHR on these pairs is <= max_fhr."""
    neg = np.sort(sim[y == 0])[::-1]
    k = int(np.floor(max_fhr * len(neg) + 1e-9))
    t = float(neg[k]) + 1e-6 if k < len(neg) else float(sim.min())
    return t, rates(sim >= t, y)


def neighbours(p: Pairs, stream: np.ndarray, radius: float, k: int = 10) -> list[list[tuple[int, float]]]:
    """For each query in `stream`, the k closest cached texts (by stream position) within `radius`."""
    out: list[list[tuple[int, float]]] = []
    ea, eb = p.ea[stream], p.eb[stream]
    for start in range(0, len(stream), 1024):
        cos = eb[start:start + 1024] @ ea.T
        for row, c in enumerate(cos):
            pos = start + row
            c[pos:] = -1.0  # only entries cached before this query
            top = np.argpartition(-c, k)[:k] if len(c) > k else np.arange(len(c))
            out.append([(int(j), float(c[j])) for j in top if c[j] >= radius])
    return out


def simulate(p: Pairs, stream: np.ndarray, near: list[list[tuple[int, float]]], prior: GlobalPrior, *,
             consider: float, radius: float, audit: float, measured_from: int = 0,
             seed: int = SEED) -> tuple[np.ndarray, dict]:
    """Stream pairs through a simulated cache with evidence; returns the served mask of
    stream[measured_from:] and the count of decisions by reason."""
    rng = random.Random(seed)
    entry_of: dict[str, int] = {}   # cached text -> entry id
    entry_at: list[int] = []        # stream position -> entry id
    evidence: list[Evidence] = []
    served = np.zeros(len(stream) - measured_from, dtype=bool)
    reasons: dict[str, int] = {}
    for pos, i in enumerate(stream):
        own = entry_of.get(p.a[i])
        s, label = float(p.sim[i]), bool(p.y[i])
        serve = False
        if s >= consider and p.ok[i]:
            parts: list[tuple[Evidence, float]] = []
            seen = set()
            if own is not None:
                parts.append((evidence[own], 1.0))
                seen.add(own)
            for j, cos in near[pos]:
                if cos < radius:
                    continue
                e = entry_at[j]
                if e not in seen:
                    seen.add(e)
                    parts.append((evidence[e], (cos - radius) / (1 - radius)))
            d = decide(Evidence.pool(parts), s, prior, consider_threshold=consider)
            serve = d.serve
            if pos >= measured_from:
                reasons[d.reason] = reasons.get(d.reason, 0) + 1
        if pos >= measured_from:
            served[pos - measured_from] = serve
        if own is None:
            own = len(evidence)
            entry_of[p.a[i]] = own
            evidence.append(Evidence())
        entry_at.append(own)
        if s >= consider and (not serve or rng.random() < audit):
            evidence[own] = evidence[own].add(s, label)
    return served, reasons


def run(args: argparse.Namespace) -> dict:
    t_start = time.time()
    emb = Embeddings(args.engine)
    qqp = prepare(load_pairs(Path(args.pairs)), emb)
    traps_dev = prepare(load_traps(Path(args.traps_dev)), emb)
    traps_hold = prepare(load_traps(Path(args.traps_holdout)), emb)
    perm = np.random.default_rng(SEED).permutation(len(qqp.y))
    tune, held = perm[: len(perm) // 2], perm[len(perm) // 2:]
    target = args.target
    res: dict = {"target": target, "pairs": str(args.pairs), "engine": emb.engine, "n_tune": len(tune),
                 "n_held": len(held),
                 "protocol": __doc__.split("Protocol (written into report.md as well):")[1].strip()}

    def sub(idx):
        return qqp.sim[idx], qqp.ok[idx], qqp.y[idx]

    s_t, ok_t, y_t = sub(tune)
    s_h, ok_h, y_h = sub(held)
    everything = np.ones_like(ok_t)

    # (a) static
    t_a = pick_threshold(s_t, everything, y_t, target, 0.5)
    # (b) static + verification
    t_b = pick_threshold(s_t, ok_t, y_t, target, 0.5)
    res["a_static"] = {"threshold": t_a, "tune": rates(s_t >= t_a, y_t), "held": rates(s_h >= t_a, y_h),
                       "traps_holdout": rates(traps_hold.sim >= t_a, traps_hold.y),
                       "traps_dev": rates(traps_dev.sim >= t_a, traps_dev.y)}
    res["b_verified"] = {"threshold": t_b, "tune": rates((s_t >= t_b) & ok_t, y_t),
                         "held": rates((s_h >= t_b) & ok_h, y_h),
                         "traps_holdout": rates((traps_hold.sim >= t_b) & traps_hold.ok, traps_hold.y),
                         "traps_dev": rates((traps_dev.sim >= t_b) & traps_dev.ok, traps_dev.y)}

    # (c) calibration: knobs chosen by simulating on the tuning half
    near_tune = neighbours(qqp, tune, 0.75)
    near_held = neighbours(qqp, held, 0.75)
    warm = np.concatenate([tune, held])
    near_warm = neighbours(qqp, warm, 0.75)
    grid = []
    for consider in (0.80, 0.85):
        cal = GlobalCalibrator(max_false_hit_rate=target, consider_threshold=consider)
        cal.add(s_t.tolist(), y_t.tolist(), ok_t.tolist())
        base = cal.fit()
        for offset_sd in (0.5, 1.0, 2.0):
            for radius in (0.75, 0.85):
                # raise t0 from (b)'s threshold until the simulated tuning FHR bound holds
                for bump in np.arange(0.0, 0.031, 0.0025):
                    prior = GlobalPrior(base.a, base.b, min(1.0, t_b + bump), target, offset_sd)
                    served, _ = simulate(qqp, tune, near_tune, prior, consider=consider, radius=radius,
                                         audit=args.audit)
                    r = rates(served, y_t)
                    if false_hit_upper_bound(r["false_hits"], r["negatives"]) <= target:
                        grid.append({"consider": consider, "offset_sd": offset_sd, "radius": radius,
                                     "t0": float(prior.threshold), "a": base.a, "b": base.b, "tune": r})
                        break
    best = max(grid, key=lambda g: g["tune"]["hits"])
    prior = GlobalPrior(best["a"], best["b"], best["t0"], target, best["offset_sd"])
    served_h, reasons_h = simulate(qqp, held, near_held, prior, consider=best["consider"],
                                   radius=best["radius"], audit=args.audit)
    served_w, _ = simulate(qqp, warm, near_warm, prior, consider=best["consider"], radius=best["radius"],
                           audit=args.audit, measured_from=len(tune))
    c_traps = np.array([decide(Evidence(), float(s), prior, consider_threshold=best["consider"]).serve and ok
                        for s, ok in zip(traps_hold.sim, traps_hold.ok)])
    c_traps_dev = np.array([decide(Evidence(), float(s), prior, consider_threshold=best["consider"]).serve and ok
                            for s, ok in zip(traps_dev.sim, traps_dev.ok)])
    res["c_calibrated"] = {"knobs": {k: best[k] for k in ("consider", "offset_sd", "radius", "t0", "a", "b")},
                           "audit": args.audit, "tune": best["tune"], "held": rates(served_h, y_h),
                           "held_warm": rates(served_w, y_h), "held_decisions": reasons_h,
                           "traps_holdout": rates(c_traps, traps_hold.y),
                           "traps_dev": rates(c_traps_dev, traps_dev.y), "grid": grid}

    # comparison: the best static threshold chosen on the held-out half itself (an oracle)
    t_o, r_o = best_static(s_h, y_h, target)
    res["best_static_held"] = {"threshold": t_o, "held": r_o}
    for name in ("b_verified", "c_calibrated"):
        fhr = res[name]["held"]["false_hit_rate"]
        t_same, r_same = best_static(s_h, y_h, fhr)
        res[name]["static_at_same_fhr"] = {"threshold": t_same, "held": r_same}

    # sweeps on the held-out half, for the report's table
    res["sweep_held"] = [
        {"threshold": float(t), "static": rates(s_h >= t, y_h), "verified": rates((s_h >= t) & ok_h, y_h)}
        for t in np.round(np.arange(0.80, 1.0001, 0.01), 2)
    ]
    # verification vetoes by reason and label (held-out half, candidates >= consider)
    veto: dict[str, dict[str, int]] = {}
    for i in held:
        if qqp.sim[i] >= best["consider"] and not qqp.ok[i]:
            d = veto.setdefault(qqp.reason[i], {"same": 0, "different": 0})
            d["same" if qqp.y[i] else "different"] += 1
    res["held_vetoes_above_consider"] = veto
    trap_kinds: dict[str, dict] = {}
    for kind in sorted(set(traps_hold.kind)):
        m = np.array([k == kind for k in traps_hold.kind])
        trap_kinds[kind] = {"n": int(m.sum()), "label": int(traps_hold.y[m][0]),
                            "vetoed": int((~traps_hold.ok[m]).sum()),
                            "served_static": int((traps_hold.sim[m] >= t_a).sum()),
                            "served_verified": int(((traps_hold.sim[m] >= t_b) & traps_hold.ok[m]).sum()),
                            "reasons": sorted({traps_hold.reason[i] for i in np.where(m)[0]})}
    res["traps_holdout_by_kind"] = trap_kinds
    res["seconds"] = round(time.time() - t_start, 1)
    return res


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def report(res: dict) -> str:
    a, b, c, o = res["a_static"], res["b_verified"], res["c_calibrated"], res["best_static_held"]
    lines = [
        "# Semantic cache precision: raw vs verified vs calibrated",
        "",
        f"Target false-hit rate (FHR): {pct(res['target'])}. Embeddings: {res['engine']}. "
        f"Pairs: `{Path(res['pairs']).name}`, "
        f"{res['n_tune']} tuning / {res['n_held']} held-out pairs. Defaults chosen on the tuning half only.",
        "",
        "| policy | defaults | tuning FHR | tuning hit | **held-out FHR** | **held-out hit** | traps-holdout FHR | traps-holdout hit |",
        "|---|---|---|---|---|---|---|---|",
        f"| (a) static | t={a['threshold']:.4f} | {pct(a['tune']['false_hit_rate'])} | {pct(a['tune']['hit_rate'])} | "
        f"{pct(a['held']['false_hit_rate'])} | {pct(a['held']['hit_rate'])} | {pct(a['traps_holdout']['false_hit_rate'])} | {pct(a['traps_holdout']['hit_rate'])} |",
        f"| (b) + verification | t={b['threshold']:.4f} | {pct(b['tune']['false_hit_rate'])} | {pct(b['tune']['hit_rate'])} | "
        f"{pct(b['held']['false_hit_rate'])} | {pct(b['held']['hit_rate'])} | {pct(b['traps_holdout']['false_hit_rate'])} | {pct(b['traps_holdout']['hit_rate'])} |",
        f"| (c) + calibration | consider={c['knobs']['consider']}, t0={c['knobs']['t0']:.4f}, sd={c['knobs']['offset_sd']}, radius={c['knobs']['radius']} | "
        f"{pct(c['tune']['false_hit_rate'])} | {pct(c['tune']['hit_rate'])} | {pct(c['held']['false_hit_rate'])} | "
        f"{pct(c['held']['hit_rate'])} | {pct(c['traps_holdout']['false_hit_rate'])} | {pct(c['traps_holdout']['hit_rate'])} |",
        f"| (c) warm (tuning half streamed first as history) | same | | | {pct(c['held_warm']['false_hit_rate'])} | {pct(c['held_warm']['hit_rate'])} | | |",
        "",
        f"Best static threshold on the held-out half itself (oracle) with FHR <= {pct(res['target'])}: "
        f"t={o['threshold']:.4f}, FHR {pct(o['held']['false_hit_rate'])}, hit {pct(o['held']['hit_rate'])}.",
    ]
    for name, label in (("b_verified", "(b)"), ("c_calibrated", "(c)")):
        same = res[name]["static_at_same_fhr"]
        lines.append(f"Best static threshold (oracle) at {label}'s held-out FHR "
                     f"({pct(res[name]['held']['false_hit_rate'])}): t={same['threshold']:.4f}, hit {pct(same['held']['hit_rate'])} "
                     f"vs {label} {pct(res[name]['held']['hit_rate'])}.")
    lines += ["", "## Held-out sweep (static vs static + verification)", "",
              "| threshold | static FHR | static hit | verified FHR | verified hit |", "|---|---|---|---|---|"]
    for row in res["sweep_held"]:
        lines.append(f"| {row['threshold']:.2f} | {pct(row['static']['false_hit_rate'])} | {pct(row['static']['hit_rate'])} | "
                     f"{pct(row['verified']['false_hit_rate'])} | {pct(row['verified']['hit_rate'])} |")
    lines += ["", "## Verification vetoes on the held-out half (candidates above the consider threshold)", "",
              "| reason | same meaning (lost hits) | different meaning (false hits avoided) |", "|---|---|---|"]
    for reason, d in sorted(res["held_vetoes_above_consider"].items(), key=lambda kv: -kv[1]["different"]):
        lines.append(f"| {reason} | {d['same']} | {d['different']} |")
    lines += ["", "## Hold-out traps by kind", "",
              "| kind | label | n | vetoed | served (a) | served (b) | veto reasons |", "|---|---|---|---|---|---|---|"]
    for kind, d in res["traps_holdout_by_kind"].items():
        lines.append(f"| {kind} | {d['label']} | {d['n']} | {d['vetoed']} | {d['served_static']} | {d['served_verified']} | {', '.join(d['reasons'])} |")
    lines += ["", f"Calibrated decisions on the held-out half: {res['c_calibrated']['held_decisions']}.",
              "", "## Protocol", "", res["protocol"], "", f"Run time: {res['seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=str(DEFAULT_PAIRS))
    ap.add_argument("--traps-dev", default=str(DATA / "traps_dev.jsonl"))
    ap.add_argument("--traps-holdout", default=str(DATA / "traps_holdout.jsonl"))
    ap.add_argument("--target", type=float, default=0.02)
    ap.add_argument("--audit", type=float, default=0.1, help="share of served hits an off-path judge audits")
    ap.add_argument("--engine", choices=["auto", "torch", "onnx"], default="auto",
                    help="embedding engine, as `semantic.embedder.engine` (auto: what the proxy uses here)")
    ap.add_argument("--out", default="out/precision")
    args = ap.parse_args(argv)
    if not Path(args.pairs).exists():
        print(f"pairs file not found: {args.pairs}", file=sys.stderr)
        return 2
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    text = report(res)
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
