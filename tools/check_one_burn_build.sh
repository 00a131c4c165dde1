#!/usr/bin/env bash
# Checks that README's three commands (the main job, the tests, the bench) ask Cargo for the same
# features of every shared dependency, so that they share one compiled Burn. A difference in any
# crate under Burn (portable-atomic and ciborium were the culprits) rebuilds Burn and CubeCL from
# that crate up: 25-35 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

features() {
    # One line per package: name, version and its enabled features. Workspace members are left
    # out: their own features differ by selection and they rebuild in seconds.
    cargo tree "$@" -f '{p} {f}' --prefix none 2>/dev/null \
        | sed 's/ (\*)$//' | grep -v '(/' | grep -v '^$' | sort -u
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
features -p nystromformer-train -e normal,build >"$tmp/main"
features -p nystromformer-bench -e normal,build >"$tmp/bench"
features --workspace -e normal,build,dev >"$tmp/tests"

status=0
for selection in main bench; do
    # A package in both selections must be built with the same feature sets in both (a package
    # may appear twice: for the target and, under a proc-macro or build script, for the host).
    differ=$(python3 - "$tmp/$selection" "$tmp/tests" <<'PY'
import sys
from collections import defaultdict

def sets(path):
    by_package = defaultdict(set)
    for line in open(path):
        name, version, *features = line.split()
        by_package[name + "@" + version].add(features[0] if features else "")
    return by_package

a, b = sets(sys.argv[1]), sets(sys.argv[2])
for package in sorted(a.keys() & b.keys()):
    if a[package] != b[package]:
        print(f"{package}: {sorted(a[package])} vs {sorted(b[package])}")
PY
)
    if [ -n "$differ" ]; then
        echo "features differ between the $selection build and the tests ($selection vs tests):"
        echo "$differ"
        status=1
    fi
done
[ "$status" -eq 0 ] && echo "one Burn build: the main job, the tests and the bench share every dependency's features"
exit "$status"
