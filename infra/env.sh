#!/usr/bin/env bash
# Print the `export ...` lines a client needs to reach the stack. Usage: eval "$(infra/env.sh)"
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$repo/.venv/bin/python" "$repo/infra/stack.py" env
