"""`stratacache invalidate ...` and `stratacache stats`: thin clients of the admin API."""
from __future__ import annotations

import argparse
import json
import os
import sys

import httpx


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("STRATACACHE_URL", "http://127.0.0.1:8080"),
                   help="proxy base URL (STRATACACHE_URL)")
    p.add_argument("--token", default=os.environ.get("STRATACACHE_ADMIN_TOKEN"),
                   help="admin token (STRATACACHE_ADMIN_TOKEN)")


def _call(method: str, url: str, token: str | None, body: dict | None = None) -> int:
    if not token:
        print("stratacache: an admin token is required (--token or STRATACACHE_ADMIN_TOKEN)", file=sys.stderr)
        return 2
    try:
        r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    except httpx.HTTPError as exc:
        print(f"stratacache: {url}: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(r.json(), indent=2))
    except ValueError:
        print(r.text)
    return 0 if r.status_code == 200 else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="stratacache")
    sub = p.add_subparsers(dest="cmd", required=True)
    inv = sub.add_parser("invalidate", help="purge or ban entries on every layer and replica")
    _common(inv)
    inv.add_argument("--tags", help="comma-separated X-Cache-Tags")
    inv.add_argument("--model")
    inv.add_argument("--namespace")
    inv.add_argument("--tenant", help="tenant id as logged")
    inv.add_argument("--older-than", type=float, metavar="SECONDS")
    inv.add_argument("--similar-to", metavar="TEXT")
    inv.add_argument("--min-similarity", type=float, default=0.9)
    inv.add_argument("--request", metavar="FILE", help="JSON file with the exact request body to purge")
    inv.add_argument("--all", action="store_true")
    st = sub.add_parser("stats", help="entries, bytes, hits and misses per layer")
    _common(st)
    a = p.parse_args(argv)
    base = a.url.rstrip("/")
    if a.cmd == "stats":
        return _call("GET", base + "/admin/stats", a.token)
    body: dict = {}
    if a.tags:
        body["tags"] = [t.strip() for t in a.tags.split(",") if t.strip()]
    for f in ("model", "namespace", "tenant"):
        if getattr(a, f) is not None:
            body[f] = getattr(a, f)
    if a.older_than is not None:
        body["older_than_s"] = a.older_than
    if a.similar_to:
        body["similar_to"] = a.similar_to
        body["min_similarity"] = a.min_similarity
    if a.request:
        with open(a.request) as f:
            body["request"] = json.load(f)
    if a.all:
        body["all"] = True
    if not body:
        p.error("give at least one criterion")
    return _call("POST", base + "/admin/invalidate", a.token, body)
