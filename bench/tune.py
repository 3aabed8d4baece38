"""`stratacache tune`: recommend the L3 similarity threshold from labelled pairs.

    stratacache tune --pairs pairs.csv --target-false-hit-rate 0.01 [--write-config config.yaml]

Each pair (a, b, label) stands for "a is cached, b is asked". At threshold t the proxy
would serve a's answer for b when cosine(a, b) >= t and, with `semantic.verify` on, the
verifier passes the pair. Over the pairs:

    precision       served pairs that are labelled the same / served pairs
    recall          served pairs that are labelled the same / pairs labelled the same
    false-hit rate  served pairs that are labelled different / pairs labelled different

The recommendation is the threshold whose false-hit rate is at or below the target with
the most pairs served (ties: fewer false hits, then the higher threshold), on a grid of
four decimals. A held-out check picks the threshold on 70% of the pairs and measures it
on the other 30%, to show how far the figure moves on pairs it was not chosen on.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.datasets import DataError, Pair, load_pairs

DEFAULT_OUT = Path("out") / "tune"
EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class Operating:
    """What serving at `threshold` does to a set of labelled pairs."""

    threshold: float
    served: int
    true_hits: int
    false_hits: int
    positives: int
    negatives: int

    @property
    def precision(self) -> float:
        return self.true_hits / self.served if self.served else 1.0

    @property
    def recall(self) -> float:
        return self.true_hits / self.positives if self.positives else 0.0

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.negatives if self.negatives else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "false_hit_rate": round(self.false_hit_rate, 5)}


@dataclass(frozen=True, slots=True)
class Sweep:
    """Cumulative counts at every distinct similarity, thresholds descending."""

    thresholds: np.ndarray
    true_hits: np.ndarray
    false_hits: np.ndarray
    positives: int
    negatives: int

    def at(self, i: int) -> Operating:
        return Operating(float(self.thresholds[i]), int(self.true_hits[i] + self.false_hits[i]),
                         int(self.true_hits[i]), int(self.false_hits[i]), self.positives, self.negatives)

    @property
    def precision(self) -> np.ndarray:
        served = self.true_hits + self.false_hits
        return np.divide(self.true_hits, served, out=np.ones(len(served)), where=served > 0)

    @property
    def recall(self) -> np.ndarray:
        return self.true_hits / max(self.positives, 1)

    @property
    def false_hit_rate(self) -> np.ndarray:
        return self.false_hits / max(self.negatives, 1)


def sweep(similarity: np.ndarray, label: np.ndarray, accepted: np.ndarray | None = None) -> Sweep:
    """Counts for every threshold equal to one of the similarities (served: sim >= t and
    accepted). `accepted` is the verifier's verdict per pair (None: all pass)."""
    sim = np.asarray(similarity, dtype=np.float64)
    lab = np.asarray(label).astype(bool)
    acc = np.ones(len(sim), dtype=bool) if accepted is None else np.asarray(accepted, dtype=bool)
    order = np.argsort(-sim, kind="stable")
    s, l, a = sim[order], lab[order], acc[order]
    tp = np.cumsum(l & a)
    fp = np.cumsum(~l & a)
    # The last index of each run of equal similarities holds the counts for t = that value.
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], dtype=int)
    return Sweep(thresholds=s[last], true_hits=tp[last], false_hits=fp[last],
                 positives=int(lab.sum()), negatives=int((~lab).sum()))


def operating_point(similarity: np.ndarray, label: np.ndarray, threshold: float,
                    accepted: np.ndarray | None = None) -> Operating:
    sim = np.asarray(similarity, dtype=np.float64)
    lab = np.asarray(label).astype(bool)
    served = sim >= threshold
    if accepted is not None:
        served &= np.asarray(accepted, dtype=bool)
    return Operating(threshold, int(served.sum()), int((served & lab).sum()), int((served & ~lab).sum()),
                     int(lab.sum()), int((~lab).sum()))


def recommend(similarity: np.ndarray, label: np.ndarray, target_false_hit_rate: float,
              accepted: np.ndarray | None = None, decimals: int = 4) -> Operating | None:
    """The threshold meeting the target with the most true hits (ties: fewer false hits,
    then the higher threshold), on a grid of `decimals` decimals: the grid point below or
    above the exact similarity, whichever still meets the target with more hits. None: no
    threshold serves anything within the target."""
    sw = sweep(similarity, label, accepted)
    ok = np.nonzero(sw.false_hit_rate <= target_false_hit_rate)[0]
    if len(ok) == 0:
        return None
    best = min(ok, key=lambda i: (-int(sw.true_hits[i]), int(sw.false_hits[i]), -float(sw.thresholds[i])))
    if sw.true_hits[best] == 0:
        return None
    scale = 10 ** decimals
    exact = float(sw.thresholds[best])
    grid = {min(math.floor(exact * scale + 1e-9) / scale, 1.0), min(math.ceil(exact * scale - 1e-9) / scale, 1.0)}
    ops = [operating_point(similarity, label, t, accepted) for t in sorted(grid)]
    ops = [op for op in ops if op.false_hit_rate <= target_false_hit_rate and op.true_hits > 0]
    if not ops:
        return None
    return min(ops, key=lambda op: (-op.true_hits, op.false_hits, -op.threshold))


# --------------------------------------------------------------------------- embedding
def embed_texts(texts: Sequence[str], embedder_config: object,
                on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, str]:
    """Vectors for `texts` (rows L2-normalised) with the configured embedder, in batches."""
    from embeddings.loader import load_embedder

    async def run() -> tuple[np.ndarray, str]:
        emb = await asyncio.to_thread(load_embedder, embedder_config)
        try:
            out = np.empty((len(texts), emb.dim), dtype=np.float32)
            for s in range(0, len(texts), EMBED_BATCH):
                batch = list(texts[s:s + EMBED_BATCH])
                out[s:s + len(batch)] = await emb.embed(batch)
                if on_batch:
                    on_batch(len(batch))
            return out, str(getattr(emb, "model_name", "?"))
        finally:
            await emb.aclose()

    return asyncio.run(run())


def embedder_config_from(config_path: str | None) -> tuple[object, bool]:
    """The EmbedderConfig the proxy would use with this config file, and whether the
    proxy verifies candidates (semantic.verify)."""
    from embeddings.loader import EmbedderConfig
    from proxy.settings import load_settings

    settings = load_settings(config_path)
    e = settings.semantic.embedder
    # A bulk batch takes far longer than the per-request deadline the proxy uses.
    cfg = EmbedderConfig(model_path=e.model_path, engine=e.engine, device=e.device, timeout_s=600.0,
                         cache_dir=str(Path(settings.state_dir) / "onnx"))
    return cfg, settings.semantic.verify


def pair_similarities(pairs: Sequence[Pair], embedder_config: object, quiet: bool = False) -> tuple[np.ndarray, str]:
    # Length order keeps each batch's padding small.
    texts = sorted({p.a for p in pairs} | {p.b for p in pairs}, key=lambda t: (len(t), t))
    index = {t: i for i, t in enumerate(texts)}
    if quiet:
        vectors, model = embed_texts(texts, embedder_config)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True, console=_stderr_console()) as bar:
            task = bar.add_task("embed", total=len(texts))
            vectors, model = embed_texts(texts, embedder_config, lambda n: bar.advance(task, n))
    ia = np.fromiter((index[p.a] for p in pairs), dtype=np.int64, count=len(pairs))
    ib = np.fromiter((index[p.b] for p in pairs), dtype=np.int64, count=len(pairs))
    return np.einsum("ij,ij->i", vectors[ia], vectors[ib]).astype(np.float64), model


def verifier_verdicts(pairs: Sequence[Pair]) -> tuple[np.ndarray, dict[str, int]]:
    from policies.verification import verify

    accepted = np.empty(len(pairs), dtype=bool)
    reasons: dict[str, int] = {}
    for i, p in enumerate(pairs):
        v = verify(p.b, p.a)
        accepted[i] = v.ok
        reasons[v.reason] = reasons.get(v.reason, 0) + 1
    return accepted, reasons


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


# --------------------------------------------------------------------------- output
def plot(path: Path, sim: np.ndarray, label: np.ndarray, accepted: np.ndarray | None,
         rec: Operating | None, target: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = sweep(sim, label, accepted)
    raw = sweep(sim, label, None) if accepted is not None else None
    fig, (ax, ax3, ax2) = plt.subplots(1, 3, figsize=(17, 4.8))
    ax.plot(sw.thresholds, sw.precision, label="precision")
    ax.plot(sw.thresholds, sw.recall, label="recall")
    ax.plot(sw.thresholds, sw.false_hit_rate, label="false-hit rate")
    if raw is not None:
        ax.plot(raw.thresholds, raw.false_hit_rate, ":", color="C2", alpha=0.6, label="false-hit rate (cosine only)")
    ax.axhline(target, color="grey", lw=0.8, ls="--", label=f"target {target:g}")
    if rec is not None:
        ax.axvline(rec.threshold, color="k", lw=1, label=f"recommended {rec.threshold:.4f}")
    lo = float(np.quantile(sim, 0.05)) if len(sim) else 0.0
    ax.set_xlim(max(0.5, lo), 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold (cosine)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="center left")
    ax.grid(alpha=0.3)
    # The false-hit rate near the target, on a log scale.
    fhr = np.maximum(sw.false_hit_rate, 1e-5)
    ax3.semilogy(sw.thresholds, fhr, color="C2", label="false-hit rate")
    if raw is not None:
        ax3.semilogy(raw.thresholds, np.maximum(raw.false_hit_rate, 1e-5), ":", color="C2", alpha=0.6,
                     label="cosine only")
    ax3.axhline(target, color="grey", lw=0.8, ls="--", label=f"target {target:g}")
    if rec is not None:
        ax3.axvline(rec.threshold, color="k", lw=1)
    ax3.set_xlim(0.8, 1.0)
    ax3.set_ylim(1e-4, 1)
    ax3.set_xlabel("threshold (cosine)")
    ax3.set_title("false-hit rate (log)")
    ax3.grid(alpha=0.3, which="both")
    ax3.legend(fontsize=8)
    bins = np.linspace(min(0.0, float(sim.min()) if len(sim) else 0.0), 1.0, 81)
    lab = label.astype(bool)
    ax2.hist(sim[lab], bins=bins, alpha=0.6, label="labelled same")
    ax2.hist(sim[~lab], bins=bins, alpha=0.6, label="labelled different")
    if rec is not None:
        ax2.axvline(rec.threshold, color="k", lw=1)
    ax2.set_xlabel("cosine similarity")
    ax2.set_ylabel("pairs")
    ax2.set_title("similarity by label")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_threshold(config_file: Path, threshold: float) -> None:
    """Set `semantic.threshold` in a YAML file (created when missing), keeping other keys;
    `semantic.consider_threshold` is lowered when it would hide candidates above it."""
    import yaml

    data = {}
    if config_file.exists():
        data = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{config_file}: the top level must be a mapping")
    sem = data.setdefault("semantic", {}) or {}
    data["semantic"] = sem
    sem["threshold"] = float(threshold)
    if "consider_threshold" in sem and float(sem["consider_threshold"]) > threshold:
        sem["consider_threshold"] = float(threshold)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(data, sort_keys=False))


def _held_out(sim: np.ndarray, label: np.ndarray, accepted: np.ndarray | None, target: float,
              seed: int) -> dict | None:
    rng = np.random.default_rng(seed)
    mask = rng.random(len(sim)) < 0.7
    if mask.sum() < 10 or (~mask).sum() < 10:
        return None
    acc = (lambda m: None if accepted is None else accepted[m])
    rec = recommend(sim[mask], label[mask], target, acc(mask))
    if rec is None:
        return None
    test = operating_point(sim[~mask], label[~mask], rec.threshold, acc(~mask))
    return {"threshold": rec.threshold, "chosen_on": int(mask.sum()), "measured_on": int((~mask).sum()),
            "fit": rec.as_dict(), "held_out": test.as_dict()}


def _line(op: Operating) -> str:
    return (f"{op.threshold:.4f} (precision {op.precision:.2f}, recall {op.recall:.2f}, "
            f"false-hit rate {op.false_hit_rate:.4f})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stratacache tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="labelled pairs: CSV (question1,question2,is_duplicate) or JSONL (a,b,label)")
    p.add_argument("--target-false-hit-rate", type=float, default=0.01,
                   help="largest acceptable share of different-meaning pairs served (default 0.01)")
    p.add_argument("--config", help="proxy YAML config: embedder and semantic.verify are read from it")
    p.add_argument("--no-verify", action="store_true", help="model cosine only, even if the config verifies")
    p.add_argument("--limit", type=int, help="use a random sample of this many pairs")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for tune.png and tune.json (default out/tune)")
    p.add_argument("--write-config", metavar="FILE", help="write semantic.threshold into this YAML file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.target_false_hit_rate < 1:
        print("stratacache tune: --target-false-hit-rate must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        pairs = load_pairs(args.pairs)
    except (DataError, OSError, ValueError) as exc:
        print(f"stratacache tune: {exc}", file=sys.stderr)
        return 2
    if args.limit and args.limit < len(pairs):
        rng = np.random.default_rng(args.seed)
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), args.limit, replace=False))]
    label = np.array([p.label for p in pairs], dtype=np.int8)
    if label.all() or not label.any():
        print("stratacache tune: the pairs need both labels (same and different)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    from proxy.settings import ConfigError

    try:
        cfg, verify_on = embedder_config_from(args.config)
    except ConfigError as exc:
        print(f"stratacache tune: {exc}", file=sys.stderr)
        return 2
    verify_on = verify_on and not args.no_verify
    sim, model = pair_similarities(pairs, cfg, quiet=args.quiet)
    accepted, reasons = verifier_verdicts(pairs) if verify_on else (None, {})
    embed_s = time.perf_counter() - t0
    target = args.target_false_hit_rate
    rec = recommend(sim, label, target, accepted)
    cosine_only = recommend(sim, label, target, None) if verify_on else None
    held = _held_out(sim, label, accepted, target, args.seed)

    n_pos, n_neg = int(label.sum()), int(len(label) - label.sum())
    print(f"pairs: {len(pairs)} ({n_pos} same, {n_neg} different) from {args.pairs}")
    print(f"embedder: {model}; {len({p.a for p in pairs} | {p.b for p in pairs})} distinct texts in {embed_s:.1f}s")
    print(f"model: served when cosine >= threshold{' and the verifier passes' if verify_on else ''}"
          f"; target false-hit rate {target:g} (served / pairs labelled different)")
    if verify_on:
        vetoed = {k: v for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]) if k != "ok"}
        print(f"verifier vetoes: {sum(vetoed.values())} pairs " + ", ".join(f"{k} {v}" for k, v in vetoed.items()))
    print()
    print(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'false-hit':>9} {'served':>7}")
    grid = sorted({round(x, 2) for x in np.arange(0.70, 1.0001, 0.02)} | ({rec.threshold} if rec else set()))
    for t in grid:
        op = operating_point(sim, label, t, accepted)
        mark = "  <- recommended" if rec is not None and t == rec.threshold else ""
        print(f"{t:>9.4f} {op.precision:>9.3f} {op.recall:>7.3f} {op.false_hit_rate:>9.4f} {op.served:>7}{mark}")
    print()
    out = Path(args.out)
    png = out / "tune.png"
    plot(png, sim, label, accepted, rec, target,
         f"{Path(args.pairs).name}: {len(pairs)} pairs, {model.split('/')[-1]}{' + verifier' if verify_on else ''}")
    result = {"pairs": str(args.pairs), "n": len(pairs), "positives": n_pos, "negatives": n_neg,
              "embedder": model, "verify": verify_on, "verifier_reasons": reasons,
              "target_false_hit_rate": target, "recommended": rec.as_dict() if rec else None,
              "cosine_only": cosine_only.as_dict() if cosine_only else None, "held_out_check": held,
              "similarity_quantiles": {f"p{q}": round(float(np.quantile(sim, q / 100)), 4) for q in (5, 25, 50, 75, 95)}}
    (out / "tune.json").write_text(json.dumps(result, indent=2))
    if cosine_only is not None:
        print(f"cosine only (no verifier): {_line(cosine_only)}")
    if held is not None:
        h = held["held_out"]
        print(f"held-out check: chosen on {held['chosen_on']} pairs -> {held['threshold']:.4f}; on the other "
              f"{held['measured_on']}: false-hit rate {h['false_hit_rate']:.4f}, recall {h['recall']:.2f}")
    print(f"plot: {png}")
    if rec is None:
        print(f"no threshold meets false-hit rate {target:g}: raise the target or improve the embedder/verifier")
        return 1
    print(f"recommended threshold: {_line(rec)}")
    if args.write_config:
        write_threshold(Path(args.write_config), rec.threshold)
        print(f"wrote semantic.threshold={rec.threshold:.4f} to {args.write_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
