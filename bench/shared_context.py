"""False hits when requests share text: labelled pairs wrapped in a template or behind context.

    python -m bench.shared_context [--pairs PATH] [--limit 600] [--threshold 0.944]
                                   [--out out/shared_context.json]

Apps rarely send a bare question: they wrap it in a template, or put retrieved context
before it. Each labelled pair (question1 cached, question2 asked; same meaning or not) is
wrapped with the same shared text on both sides, in three layouts:

* context  "Context: <shared>\\n\\nQuestion: <q>"   (retrieval-augmented prompts)
* inline   "<shared> <q>"                           (a template without line breaks)
* suffix   "<q>\\n\\n<shared>"                         (instructions after the question)
* run-in   "<shared, punctuation removed> <q>"      (a template with no sentence boundary)

The shared text is other questions of the same file, about N tokens of it (N = 0 is the
bare pair). A second table asks each cached question again with one segment added: an
instruction that changes the answer ("Answer in French.", "Reply in JSON.": serving is
wrong) or a filler ("Thanks!", "Quick question:": serving is right). A pair is served when the whole texts' cosine reaches --threshold and
`policies.verification` passes: "without the check", as a plain semantic cache would; and
"with the check" when in addition the parts that differ (`policies.shared_context`) reach
the threshold, as the proxy's L3 does. Embeddings come from the engine the proxy uses.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from bench.datasets import load_pairs
from bench.precision import DEFAULT_PAIRS, Embeddings
from policies.shared_context import differing_parts
from policies.verification import verify

LAYOUTS = {
    "context": lambda shared, q: f"Context: {shared}\n\nQuestion: {q}",
    "inline": lambda shared, q: f"{shared} {q}",
    "suffix": lambda shared, q: f"{q}\n\n{shared}",
    "run-in": lambda shared, q: f"{re.sub(r'[.!?:;]', '', shared)} {q}",
}
SIZES = {"context": (0, 16, 64, 192), "inline": (16, 64), "suffix": (16, 64), "run-in": (16, 64)}


INSTRUCTIONS = ["Answer in French.", "Be brief.", "Explain in great detail.", "Give me three examples.",
                "Answer with yes or no only.", "Write it as a poem.", "Use bullet points.", "Reply in JSON.",
                "Explain it to a child.", "Include sources."]
FILLERS = ["Thanks!", "Quick question:", "Please help.", "Hi!", "Thank you in advance.", "Hey there,"]


def shared_text(pool: list[str], tokens: int, count, rng: random.Random) -> str:
    parts: list[str] = []
    n = 0
    while n < tokens:
        q = rng.choice(pool)
        parts.append(q)
        n += count(q)
    return " ".join(parts)


def run(pairs_path: Path, limit: int, threshold: float, engine: str, seed: int = 1) -> dict:
    pairs = load_pairs(pairs_path)
    rng = random.Random(seed)
    rng.shuffle(pairs)
    measured, pool = pairs[:limit], [p.a for p in pairs[limit:limit + 2000]]
    emb = Embeddings(engine)
    tokenizer = getattr(emb.backend, "_tokenizer", None)
    count = (lambda t: len(tokenizer.encode(t).ids) - 2) if tokenizer is not None else (lambda t: len(t.split()))
    rows = []
    for layout, wrap in LAYOUTS.items():
        for tokens in SIZES[layout]:
            r = random.Random(f"{layout}{tokens}")
            cached, asked = [], []
            for p in measured:
                shared = shared_text(pool, tokens, count, r) if tokens else ""
                cached.append(wrap(shared, p.a) if tokens else p.a)
                asked.append(wrap(shared, p.b) if tokens else p.b)
            emb.encode(cached + asked)  # in bulk: `served` then finds the vectors cached
            tally = {0: [0, 0, 0], 1: [0, 0, 0]}  # label -> [pairs, served without, served with]
            for c, q, p in zip(cached, asked, measured):
                without, with_check = served(emb, q, c, threshold)
                t = tally[p.label]
                t[0], t[1], t[2] = t[0] + 1, t[1] + without, t[2] + with_check
            rows.append({
                "layout": layout, "shared_tokens": tokens, "pairs": len(measured),
                "fhr_without": tally[0][1] / max(1, tally[0][0]), "hit_without": tally[1][1] / max(1, tally[1][0]),
                "fhr_with": tally[0][2] / max(1, tally[0][0]), "hit_with": tally[1][2] / max(1, tally[1][0]),
            })
    return {"pairs": str(pairs_path), "engine": emb.engine, "threshold": threshold, "rows": rows,
            "additions": additions(measured[:100], pool, count, emb, threshold)}


def served(emb, query: str, cached: str, threshold: float) -> tuple[bool, bool]:
    """(served without the check, served with it)."""
    a, b = emb.encode([cached, query])
    if float(a @ b) < threshold or not verify(query, cached).ok:
        return False, False
    parts = differing_parts(query, cached)
    if parts is None:
        return True, True
    pa, pb = emb.encode(list(parts))
    return True, float(pa @ pb) >= threshold


def additions(pairs, pool: list[str], count, emb, threshold: float) -> list[dict]:
    rows = []
    for tokens in (0, 64):
        r = random.Random(f"additions{tokens}")
        tally = {"instruction": [0, 0, 0], "filler": [0, 0, 0]}
        for p in pairs:
            base = f"{shared_text(pool, tokens, count, r)} {p.a}" if tokens else p.a
            asked = [("instruction", f"{base} {x}") for x in INSTRUCTIONS]
            asked += [("filler", f"{x} {base}" if x[-1] in ":," else f"{base} {x}") for x in FILLERS]
            for kind, query in asked:
                without, with_check = served(emb, query, base, threshold)
                t = tally[kind]
                t[0], t[1], t[2] = t[0] + 1, t[1] + without, t[2] + with_check
        for kind, (n, without, with_check) in tally.items():
            rows.append({"added": kind, "shared_tokens": tokens, "asked": n,
                         "served_without": without / max(1, n), "served_with": with_check / max(1, n)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    ap.add_argument("--limit", type=int, default=600, help="pairs measured")
    ap.add_argument("--threshold", type=float, default=0.944, help="as semantic.threshold")
    ap.add_argument("--engine", choices=["auto", "torch", "onnx"], default="auto")
    ap.add_argument("--out", type=Path, default=Path("out/shared_context.json"))
    a = ap.parse_args(argv)
    if not a.pairs.exists():
        print(f"no pairs file at {a.pairs}: pass --pairs", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    res = run(a.pairs, a.limit, a.threshold, a.engine)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(f"threshold {a.threshold}, engine {res['engine']}, {res['rows'][0]['pairs']} pairs\n")
    print("| layout | shared tokens | FHR without check | hit without | FHR with check | hit with |")
    print("|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['layout']} | {r['shared_tokens']} | {r['fhr_without']:.2%} | {r['hit_without']:.2%} | "
              f"{r['fhr_with']:.2%} | {r['hit_with']:.2%} |")
    print("\n| one segment added | shared tokens | served without check | served with check |")
    print("|---|---|---|---|")
    for r in res["additions"]:
        right = "wrong" if r["added"] == "instruction" else "right"
        print(f"| {r['added']} (serving is {right}) | {r['shared_tokens']} | {r['served_without']:.1%} | "
              f"{r['served_with']:.1%} |")
    print(f"\nrun time {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
