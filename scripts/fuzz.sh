#!/usr/bin/env bash
# Fuzz the parsers of untrusted input for a bounded time each: base tarballs
# (tar reader, rewrite, contract scan), disk-image headers (GPT, ext4),
# NoCloud user-data / meta-data and their merge, cidata volume labels, the
# kernel command line and the whole metadata lookup.
#
#   scripts/fuzz.sh [SECONDS] [FILTER]   SECONDS per target (default 60);
#                                        FILTER picks targets by substring
#
# Not part of CI: `cargo test` runs the same bolero targets for a fraction of
# a second each. Here they run one after another on one thread, niced (the
# machine is shared), built with optimisation but with overflow checks and
# debug assertions on. A target that fails prints its input and its
# BOLERO_RANDOM_SEED; one that stops answering is killed and reported as a
# hang. Full logs go to target/fuzz-logs/. Exit status 1 if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${1:-60}
filter=${2:-}
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "usage: $0 [SECONDS] [FILTER]" >&2; exit 2; }

profile=(--profile fuzz
    --config 'profile.fuzz.inherits="dev"'
    --config 'profile.fuzz.opt-level=3'
    --config 'profile.fuzz.debug="line-tables-only"')
# package and test-target selection, one per test binary that holds targets
binaries=("-p imgbuild --lib" "-p imgbuild --test fuzz_parsers"
    "-p firstboot-agent --test fuzz_parsers")
logs=target/fuzz-logs
mkdir -p "$logs"

echo "== building the fuzz targets (profile fuzz)"
for b in "${binaries[@]}"; do
    # shellcheck disable=SC2086
    nice cargo test --quiet "${profile[@]}" $b --no-run
done

# Targets are the tests named fuzz_*.
declare -a runs=()
for b in "${binaries[@]}"; do
    # shellcheck disable=SC2086
    while read -r name; do
        [[ -z $filter || $name == *"$filter"* ]] && runs+=("$b|$name")
    done < <(cargo test --quiet "${profile[@]}" $b -- --list 2>/dev/null |
        sed -n 's/: test$//p' | grep -E '(^|::)fuzz_[a-z0-9_]+$' || true)
done
[[ ${#runs[@]} -gt 0 ]] || { echo "no fuzz target matches '$filter'" >&2; exit 2; }

echo "== ${#runs[@]} targets, ${seconds}s each (about $(( ${#runs[@]} * seconds / 60 + 1 )) min)"
failed=0
summary=()
for run in "${runs[@]}"; do
    b=${run%%|*}
    name=${run#*|}
    log="$logs/${name##*::}.log"
    echo "-- $name"
    status=0
    # shellcheck disable=SC2086
    BOLERO_RANDOM_TEST_TIME_MS=$((seconds * 1000)) \
    BOLERO_RANDOM_ITERATIONS=18446744073709551615 \
    RUST_BACKTRACE=0 \
        timeout --kill-after=10 $((seconds + 120)) \
        nice cargo test --quiet "${profile[@]}" $b -- --exact "$name" \
            --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
    stats=$(grep -o 'run time: .*' "$log" | tail -n 1 || true)
    if [[ $status -eq 0 ]]; then
        result="ok"
    elif [[ $status -eq 124 || $status -eq 137 ]]; then
        result="HANG (killed after $((seconds + 120))s)"
        failed=1
    else
        result="FAILED"
        failed=1
        # The failure report: seed, input, and the panic message.
        { sed -n '/== Test Failure ==/,/^=\{20,\}$/p' "$log" | head -n 40; } || true
        grep -m 3 -E 'panicked at [^/]|memory allocation of' -A 2 "$log" | cut -c1-400 || true
    fi
    echo "   $result | ${stats:-no bolero summary (see $log)}"
    summary+=("$(printf '%-8s %-58s %s' "${result%% *}" "${name##*::}" "${stats:-}")")
done

echo "== summary (${seconds}s per target; logs in $logs/)"
printf '%s\n' "${summary[@]}"
exit $failed
