#!/bin/sh
# fuzz/run.sh BUILD SECONDS WORK TARGET...   (what `make fuzz` runs)
#
# Runs each libFuzzer target BUILD/fuzz/fuzz_TARGET for SECONDS, one at a
# time (one process: the machine is shared), on a working corpus in
# WORK/corpus/TARGET seeded from fuzz/corpus/TARGET and
# fuzz/regressions/TARGET. New inputs go there, never into the
# repository; WORK is kept, so the next run starts from what this one
# found. A crash leaves WORK/artifacts/TARGET-crash-*; then the summary
# says how to turn it into a regression. Exit 1 when any target failed.
set -u

if [ $# -lt 4 ]; then
	echo "usage: $0 BUILD SECONDS WORK TARGET..." >&2
	exit 2
fi
build=$1 seconds=$2 work=$3
shift 3
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work/artifacts"
failed=""
summary=""

for t in "$@"; do
	bin=$build/fuzz/fuzz_$t
	corpus=$work/corpus/$t
	log=$work/$t.log
	if [ ! -x "$bin" ]; then
		echo "fuzz: $bin is missing (cmake --build $build --target fuzz_$t)" >&2
		exit 2
	fi
	mkdir -p "$corpus"
	cp "$src/corpus/$t"/* "$corpus/"
	if [ -d "$src/regressions/$t" ]; then
		cp "$src/regressions/$t"/* "$corpus/"
	fi
	dict=""
	if [ -f "$src/$t.dict" ]; then
		dict="-dict=$src/$t.dict"
	fi
	echo "fuzz: $t for ${seconds}s, corpus $corpus, log $log"
	# -timeout: one input that takes seconds is a hang worth reporting; -max_len: config files need room.
	"$bin" -max_total_time="$seconds" -timeout=10 -max_len=8192 -print_final_stats=1 \
		-artifact_prefix="$work/artifacts/$t-" $dict "$corpus" >"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/cov \1, features \2, corpus \3/p')
	if [ "$rc" -eq 0 ]; then
		result=ok
	else
		result="FAILED (exit $rc)"
		failed="$failed $t"
		grep -E 'invariant broken|ERROR: |SUMMARY: |Test unit written' "$log" | head -n 5 >&2
	fi
	summary="$summary$(printf '%-14s %-16s %-12s %s' "$t" "$result" "${runs:-?} runs" "$cov")
"
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '%s' "$summary"
if [ -n "$failed" ]; then
	echo
	echo "failed:$failed. Crashing inputs: $work/artifacts/. Replay one with"
	echo "  $build/fuzz/fuzz_TARGET FILE; shrink it with -minimize_crash=1 -runs=100000;"
	echo "fix the bug, then add the input as fuzz/regressions/TARGET/<what-it-breaks> (docs/testing.md)."
	exit 1
fi
