#!/usr/bin/env bash
# Installs everything, then runs the main job: the simulated backend on 127.0.0.1:9000 and
# the caching proxy on 127.0.0.1:8080 in front of it (L1, bundled Redis L2, FAISS L3).
# Pass --model PATH to serve a local Hugging Face model instead of the simulated backend;
# any other arguments go to `stratacache serve` (e.g. --config config.example.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
backend_args=(--simulate)
serve_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) backend_args=(--model "$2"); shift 2 ;;
    *) serve_args+=("$1"); shift ;;
  esac
done
.venv/bin/stratacache backend "${backend_args[@]}" --host 127.0.0.1 --port 9000 &
backend_pid=$!
trap 'kill $backend_pid 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 600); do
  curl -sf http://127.0.0.1:9000/healthz >/dev/null 2>&1 && break
  kill -0 $backend_pid 2>/dev/null || { echo "backend failed to start" >&2; exit 1; }
  sleep 0.5
done
echo "backend ready on http://127.0.0.1:9000; proxy starting on http://127.0.0.1:8080" >&2
.venv/bin/stratacache serve --upstream http://127.0.0.1:9000 --host 127.0.0.1 --port 8080 ${serve_args[@]+"${serve_args[@]}"}
