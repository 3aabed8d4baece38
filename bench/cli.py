"""`stratacache bench`: run a benchmark scenario, or list the bundled ones.

    stratacache bench list
    stratacache bench run --scenario paraphrase-qqp [--out out/bench/paraphrase-qqp]
    stratacache bench run --scenario my.yaml --backend-url http://127.0.0.1:9000 --limit 200

A run starts a simulated backend, a redis-server and the proxy on free loopback ports
(unless given by URL), sends the workload straight to the backend (the baseline), then
through the proxy (and through any peers the scenario names), and writes results.json,
records.jsonl, report.md and PNG plots into --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.datasets import DataError
from bench.processes import ProcessError
from bench.scenario import ScenarioError, load_scenario, scenario_names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stratacache bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list the bundled scenarios")
    r = sub.add_parser("run", help="run one scenario")
    r.add_argument("--scenario", required=True, help="a bundled scenario name or a YAML file")
    r.add_argument("--out", help="output folder (default out/bench/<scenario>)")
    r.add_argument("--backend-url", help="use this OpenAI-compatible backend instead of starting the simulated one")
    r.add_argument("--proxy-url", help="use this running proxy instead of starting one (no fault injection)")
    r.add_argument("--data", help="data file for the workload (overrides the scenario's)")
    r.add_argument("--limit", type=int, help="pairs or conversations to sample")
    r.add_argument("--count", type=int, help="requests (exact, zipf) or bursts (burst)")
    r.add_argument("--concurrency", type=int, help="requests in flight (overrides the scenario's)")
    r.add_argument("--no-peers", action="store_true", help="skip the peers the scenario names")
    r.add_argument("--no-direct", action="store_true", help="skip the direct-to-backend baseline")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="proxy config override, e.g. --set semantic.threshold=0.93 (repeatable)")
    r.add_argument("--proxy-config", metavar="FILE",
                   help="YAML merged over the scenario's proxy config (e.g. one written by `stratacache tune`)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _list() -> int:
    for name in scenario_names():
        try:
            sc = load_scenario(name)
            print(f"{name:<22} {sc.description}")
        except ScenarioError as exc:
            print(f"{name:<22} (invalid: {exc})")
    return 0


def _print_summary(results: dict, out: Path) -> None:
    for line in results.get("headline", []):
        print(line)
    for name, p in (results.get("peers") or {}).items():
        if p["status"] != "ok":
            print(f"peer {name}: {p['status']}: {p.get('detail', '')}")
    print(f"report: {out / 'report.md'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "list":
        return _list()
    from bench.runner import RunOptions, run_scenario

    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"stratacache bench: {exc}", file=sys.stderr)
        return 2
    from bench.runner import deep_merge, parse_overrides

    try:
        overrides = {}
        if args.proxy_config:
            import yaml

            overrides = yaml.safe_load(Path(args.proxy_config).read_text()) or {}
        overrides = deep_merge(overrides, parse_overrides(args.set))
    except (OSError, ValueError) as exc:
        print(f"stratacache bench: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("out") / "bench" / sc.name)
    opts = RunOptions(out=out, backend_url=args.backend_url, proxy_url=args.proxy_url, data=args.data,
                      limit=args.limit, count=args.count, concurrency=args.concurrency, peers=not args.no_peers,
                      direct=not args.no_direct, quiet=args.quiet, proxy_overrides=overrides)
    try:
        results = run_scenario(sc, opts)
    except (DataError, ProcessError) as exc:
        print(f"stratacache bench: {exc}", file=sys.stderr)
        return 1
    _print_summary(results, out)
    return 1 if any(t["failed"] for n, t in results["targets"].items() if n in ("direct", "stratacache")) else 0


if __name__ == "__main__":
    sys.exit(main())
