#!/usr/bin/env bash
# How the request path scales with members and workers (docs/benchmarks.md, "How it scales").
#
# Builds a throw-away model repository of 20 members, m01..m20, each a copy of one of the digits
# members (logreg, random_forest, mlp in turn, so every ensemble mixes the three), and a spec of
# hard-vote ensembles over the first 1, 3, 5, 10 and 20 of them; then, for 1, 2 and 4 workers,
# `chorus bench --spawn` drives each ensemble closed-loop (single-row JSON) and the figures are
# printed as one Markdown table: throughput, p50/p99, and the coordinator's CPU per request and
# per member call.
#
# Usage: scripts/bench-scaling.sh [--quick]
#   CHORUS=target/release/chorus (default; build it with `cargo build --release -p chorus`)
#   CONCURRENCY=32 DURATION=5s WARMUP=2s MEMBERS="1 3 5 10 20" WORKERS="1 2 4"
#   OUT=target/scaling (repository, spec, per-run JSON and the table)
#   EXTRA_BENCH_ARGS="--worker-arg=--inline-max-run-us=0" (passed to every bench run)
# --quick: one short run per cell (DURATION=1s WARMUP=500ms), to check the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."

CHORUS=${CHORUS:-target/release/chorus}
OUT=${OUT:-target/scaling}
CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
MEMBERS=${MEMBERS:-"1 3 5 10 20"}
WORKERS=${WORKERS:-"1 2 4"}
EXTRA_BENCH_ARGS=${EXTRA_BENCH_ARGS:-}
if [ "${1:-}" = "--quick" ]; then
    DURATION=1s
    WARMUP=500ms
fi
[ -x "$CHORUS" ] || { echo "bench-scaling: $CHORUS not found; build it first" >&2; exit 1; }

max_members=0
for n in $MEMBERS; do [ "$n" -gt "$max_members" ] && max_members=$n; done

rm -rf "$OUT"
mkdir -p "$OUT/models" "$OUT/runs"
sources=(logreg random_forest mlp)
for i in $(seq 1 "$max_members"); do
    name=$(printf 'm%02d' "$i")
    cp -r "models/${sources[$(((i - 1) % 3))]}" "$OUT/models/$name"
done

spec="$OUT/ensembles.toml"
echo "version = 1" >"$spec"
for n in $MEMBERS; do
    {
        echo "[[ensemble]]"
        echo "name = \"hard_$n\""
        echo "combiner = \"hard_vote\""
        echo "deadline_ms = 2000"
        echo "min_members = $n"
        for i in $(seq 1 "$n"); do
            printf '[[ensemble.member]]\nmodel = "m%02d"\n' "$i"
        done
        echo
    } >>"$spec"
done

for w in $WORKERS; do
    cluster="$OUT/cluster-$w.toml"
    cat >"$cluster" <<EOF
version = 1
http_addr = "127.0.0.1:0"
model_repository = "$OUT/models"
ensembles = "$spec"
workers = $w
replication = 1
EOF
    for n in $MEMBERS; do
        echo "bench-scaling: $n members on $w workers" >&2
        # shellcheck disable=SC2086 # EXTRA_BENCH_ARGS is a list of flags
        "$CHORUS" bench --spawn --config "$cluster" --model "hard_$n" \
            --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
            --verify-every 0 --label "members=$n workers=$w" \
            --json-out "$OUT/runs/hard_${n}_w${w}.json" $EXTRA_BENCH_ARGS >&2
    done
done

python3 - "$OUT" "$MEMBERS" "$WORKERS" "$CONCURRENCY" <<'EOF' | tee "$OUT/table.md"
import json, sys
out, members, workers, concurrency = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
print(f"Closed loop, c={concurrency}, single-row JSON, hard vote; coordinator CPU from procfs.")
print()
print("| members | workers | req/s | p50 ms | p99 ms | errors | coordinator CPU µs/request | µs per member call |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in members:
    for w in workers:
        run = json.load(open(f"{out}/runs/hard_{n}_w{w}.json"))["runs"][0]
        r, lat = run["results"], run["results"]["latency_us"]
        coord = next((p for p in run["processes"] if p["name"] == "coordinator"), {})
        cpu = coord.get("cpu_us_per_request")
        errors = sum(run["errors"]["by_status"].values()) + sum(
            run["errors"][k] for k in ("transport", "timeout", "wrong_answer", "dropped"))
        per_call = f"{cpu / int(n):.1f}" if cpu else "-"
        cpu = f"{cpu:.0f}" if cpu else "-"
        print(f"| {n} | {w} | {r['requests_per_s']:.0f} | {lat['p50'] / 1000:.2f} | "
              f"{lat['p99'] / 1000:.2f} | {errors} | {cpu} | {per_call} |")
EOF
