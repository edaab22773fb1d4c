#!/bin/sh
# Rate pithcrawl's systemd units with systemd's own analyzer, offline (no running
# systemd needed, nothing is installed or started).
#
#   systemd/check-security.sh [THRESHOLD]
#
# THRESHOLD is the highest acceptable exposure, on systemd-analyze's 0.0-10.0 scale
# (lower is safer; below 5.0 is "OK"). Default 4.9. Each service must also pass
# `systemd-analyze verify` with no unknown or invalid setting.
#
# Needs systemd >= 250 (`security --offline`, `--threshold`); on Debian and Ubuntu,
# `apt-get install systemd`. Not part of the test suite: CI machines may not have it.
# Exit: 0 every unit passes, 1 one does not, 2 systemd-analyze is missing or too old.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
threshold=${1:-4.9}
services="pithcrawl.service pithcrawl-sync.service pithcrawl-serve.service"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-security: systemd-analyze not found (apt-get install systemd)" >&2
    exit 2
fi
if ! systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    echo "check-security: $(systemd-analyze --version | head -n 1) has no 'security --offline'" >&2
    exit 2
fi

# --threshold counts tenths: 4.9 on the printed scale is 49.
limit=$(awk -v t="$threshold" 'BEGIN { printf "%d", t * 10 + 0.5 }')

# verify insists that ExecStart's binary exists: check copies of the units that point at
# the pithcrawl on PATH (or /bin/true, which is enough to check the unit's syntax).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
binary=$(command -v pithcrawl || echo /bin/true)
cp "$here"/pithcrawl.service "$here"/pithcrawl-sync.service "$here"/pithcrawl-serve.service \
    "$here"/pithcrawl-sync.timer "$work"/
# The node template is checked as one of its instances.
cp "$here"/pithcrawl@.service "$work"/pithcrawl@node-1.service
sed -i "s#/usr/local/bin/pithcrawl#$binary#" "$work"/*.service

status=0
for unit in $services pithcrawl@node-1.service; do
    if systemd-analyze security --offline=true --threshold="$limit" "$work/$unit" >"$work/out" 2>&1; then
        verdict=pass
    else
        verdict=FAIL
        status=1
    fi
    grep -E '^(✗|→)' "$work/out" || cat "$work/out"
    echo "$unit: $verdict (threshold $threshold)"
    echo
done

# verify exits 0 on an unknown or unparsable setting (it only warns), so read its words.
# "Failed to parse system call" is about syscall names newer than libseccomp: not ours.
verify_ok=yes
(cd "$work" && systemd-analyze verify --man=no ./pithcrawl.service ./pithcrawl-sync.service \
    ./pithcrawl-sync.timer ./pithcrawl@node-1.service) >"$work/verify" 2>&1 || verify_ok=no
if grep -v 'Failed to parse system call' "$work/verify" \
    | grep -Eq "Unknown (key|section|lvalue)|Invalid|[Ff]ailed to parse|ignoring"; then
    verify_ok=no
fi
if [ "$verify_ok" = yes ]; then
    echo "verify: pass"
else
    cat "$work/verify"
    echo "verify: FAIL"
    status=1
fi
exit $status
