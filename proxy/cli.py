"""`stratacache` command line: serve, backend, bench, tune, invalidate, stats."""
from __future__ import annotations

import argparse
import os
import sys


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import create_app
    from proxy.logs import setup_logging
    from proxy.settings import ConfigError, load_settings

    overrides = {"upstream": args.upstream, "host": args.host, "port": args.port, "admin_token": args.admin_token,
                 "state_dir": args.state_dir}
    if args.redis_url is not None:
        overrides["redis"] = {"url": args.redis_url}
    if args.no_semantic:
        overrides["semantic"] = {"enabled": False}
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"stratacache: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=30, lifespan="on")
    return 0


def _backend(args: argparse.Namespace) -> int:
    if args.make_tiny_model:
        from backend.tiny_model import make_tiny_model

        make_tiny_model(args.make_tiny_model)
        print(f"tiny model written to {args.make_tiny_model}")
        return 0
    if args.simulate or not args.model:
        from backend.simulated import serve

        serve(args.host, args.port, args.ttft_ms, args.tokens_per_s)
        return 0
    from backend.hf_server import serve as serve_hf

    serve_hf(args.model, args.host, args.port, device=args.device, dtype=args.dtype, max_batch=args.max_batch)
    return 0


DELEGATED = {"bench": "bench.cli", "tune": "bench.tune", "invalidate": "proxy.admin_client",
             "stats": "proxy.admin_client"}
"""Subcommands with their own argument parsers (argv after the subcommand word goes to `main`)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stratacache", description="OpenAI-compatible caching reverse proxy")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the caching proxy")
    s.add_argument("--upstream", help="base URL of the OpenAI-compatible backend (default http://127.0.0.1:9000)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--config", help="YAML config file (see config.example.yaml)")
    s.add_argument("--redis-url", help="Redis URL; omitted: start a bundled redis-server")
    s.add_argument("--admin-token", help="enables /admin (or STRATACACHE_ADMIN_TOKEN)")
    s.add_argument("--state-dir", help="where the bundled Redis and exported models live")
    s.add_argument("--no-semantic", action="store_true", help="exact layers only")
    s.set_defaults(func=_serve)

    b = sub.add_parser("backend", help="run a generation backend (simulated, or a local HF model)")
    b.add_argument("--simulate", action="store_true", help="deterministic simulated backend (no model)")
    b.add_argument("--model", help="local Hugging Face causal LM directory")
    b.add_argument("--make-tiny-model", metavar="DIR", help="write a tiny random model for tests and demos, then exit")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=9000)
    b.add_argument("--ttft-ms", type=float, default=150.0)
    b.add_argument("--tokens-per-s", type=float, default=40.0)
    b.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    b.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    b.add_argument("--max-batch", type=int, default=8)
    b.set_defaults(func=_backend)

    for name, helptext in [
        ("bench", "run a benchmark scenario (see `stratacache bench --help`)"),
        ("tune", "recommend an L3 threshold from labelled pairs"),
        ("invalidate", "invalidate entries through the admin API"),
        ("stats", "show cache statistics from the admin API"),
    ]:
        sub.add_parser(name, help=helptext, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        rest = argv if argv[0] in ("invalidate", "stats") else argv[1:]
        return int(importlib.import_module(DELEGATED[argv[0]]).main(rest) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
