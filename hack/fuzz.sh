#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a bounded time each (go test -fuzz takes one target per run). Every
# target runs even when an earlier one fails; a summary follows, and the exit status is non-zero if any failed.
#
# Go's fuzzer sometimes ends a short run with "context deadline exceeded" without having found anything
# (golang/go#75804): the coordinator's deadline races the workers' shutdown. A failure with that message that wrote
# no new crasher under testdata/fuzz/ is such a flake, so that target is run once more (and the rerun is reported).
set -uo pipefail
fuzztime="${1:-10s}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log=$(mktemp "${TMPDIR:-/tmp}/kilo-fuzz.XXXXXX")
trap 'rm -f "$log"' EXIT

# corpus PKG TARGET: the crasher files the fuzzer has written for TARGET so far, one per line.
corpus() { find "$1/testdata/fuzz/$2" -type f 2>/dev/null | sort; }

# run_target PKG TARGET: runs the target, its output on the terminal and in $log.
run_target() {
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime" "$1" 2>&1 | tee "$log"
}

passed=() failed=() rerun=()
while read -r f; do
  pkg="./$(dirname "$f")"
  while read -r target; do
    echo "== $pkg $target ($fuzztime)"
    before=$(corpus "$pkg" "$target")
    if run_target "$pkg" "$target"; then
      passed+=("$pkg $target"); continue
    fi
    if grep -q 'context deadline exceeded' "$log" && [[ "$(corpus "$pkg" "$target")" == "$before" ]]; then
      echo "== $pkg $target failed with \"context deadline exceeded\" and no new crasher (golang/go#75804): running it once more"
      rerun+=("$pkg $target")
      if run_target "$pkg" "$target"; then
        passed+=("$pkg $target (after a rerun)"); continue
      fi
    fi
    failed+=("$pkg $target")
  done < <(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //')
done < <(grep -rl --include='*_test.go' '^func Fuzz' internal cmd 2>/dev/null | sort)

echo
echo "== fuzz summary ($fuzztime per target): ${#passed[@]} passed, ${#failed[@]} failed, ${#rerun[@]} rerun after golang/go#75804"
for t in "${passed[@]}"; do echo "   ok    $t"; done
for t in "${failed[@]}"; do echo "   FAIL  $t"; done
if (( ${#failed[@]} )); then
  echo "A failing target's crasher, if it found one, is under <package>/testdata/fuzz/<target>/; reproduce with"
  echo "  go test -run '<target>/<file>' <package>"
  exit 1
fi
if (( ${#passed[@]} == 0 )); then
  echo "no fuzz targets found" >&2
  exit 1
fi
