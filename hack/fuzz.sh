#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a bounded time each. go test -fuzz takes one target per run.
set -euo pipefail
fuzztime="${1:-10s}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -rl --include='*_test.go' '^func Fuzz' internal cmd 2>/dev/null | while read -r f; do
  pkg="./$(dirname "$f")"
  grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //' | while read -r target; do
    echo "== $pkg $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
  done
done
