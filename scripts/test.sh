#!/usr/bin/env bash
# Installs everything, then runs the whole test suite (real redis-server, real FAISS,
# the real embedding model, real HTTP servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
