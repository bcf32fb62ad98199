#!/usr/bin/env bash
# CUDA check: the same cluster on CPU and on the execution provider under test, every sample
# ensemble and model answering the 450 digits test rows on both, answers compared within a
# per-precision tolerance, then a CPU-vs-provider throughput table from `chorus bench`.
# Both clusters serve a temporary copy of models/ plus `gpu_mlp`, the GPU-sized model that
# fixtures/make_gpu_model.py generates (84 MB, untrained, so it is never in models/), alone and
# in the extra ensemble `gpu_soft` (soft vote of gpu_mlp and mlp).
#
#   scripts/gpu-check.sh                           # on a machine with an NVIDIA GPU (CUDA 12)
#   scripts/gpu-check.sh --execution-provider cpu  # the same flow on CPU only (CI: gpu_check_cpu)
#
# With `cuda` it installs the pinned onnxruntime-gpu wheel (the version of the `onnxruntime` pin
# in fixtures/requirements.txt, with its CUDA and cuDNN wheels) into .venv-gpu, and starts the
# worker under test with `--execution-provider=cuda --require-provider`: no silent CPU fallback.
# The reference worker always runs on CPU with the project's .venv ONNX Runtime.
#
# The worker under test serves its own copy of the repository with `io_binding = true` added to
# every model's config.toml (`--io-binding off` adds `io_binding = false`), so that its answers
# come through ONNX Runtime's IoBinding (outputs in CUDA-pinned host memory) and the reference's
# through the plain run: on CPU the flow checks that the bound path answers like the plain one.
#
# Tolerances (max |difference| of any probability / agreement value, and the share of rows whose
# label must match the CPU label) are by precision, read from the model or ensemble name:
#   FP32              1e-4   all labels
#   *fp16*            5e-3   99% of labels  (FP16 products round differently on GPU kernels)
#   *int8*            5e-2   99% of labels  (a rounding difference before a QuantizeLinear moves
#                                            a value by a whole quantization step)
# The FP16/INT8 figures are first estimates, not yet measured on a GPU (docs/benchmarks.md).
#
# Environment: CHORUS_BIN (default: target/release/chorus, built if missing), PYTHON (default
# python3; needs only the standard library), FIXTURE_PYTHON (runs make_gpu_model.py, needs numpy;
# default .venv/bin/python, else PYTHON). Exit status 0 only if every answer is within
# tolerance and every benchmark run answered without errors.
set -euo pipefail

usage() {
    sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Flags:
  --execution-provider cuda|cpu   provider of the worker under test (default cuda)
  --duration D                    measured time per benchmark run (default 5s)
  --warmup D                      unmeasured load before each run (default 1s)
  --concurrency N                 closed-loop clients per run (default 8)
  --rows LIST                     rows per request, comma-separated (default 1,32)
  --bench-models LIST             models/ensembles to benchmark, comma-separated
                                  (default digits_soft,digits_soft_int8,mlp,mlp_int8,mlp_fp16,
                                  gpu_mlp,gpu_soft)
  --io-binding on|off             io_binding of every model served by the worker under test
                                  (default on)
EOF
}

EP=cuda
DURATION=5s
WARMUP=1s
CONCURRENCY=8
ROWS=1,32
BENCH_MODELS=digits_soft,digits_soft_int8,mlp,mlp_int8,mlp_fp16,gpu_mlp,gpu_soft
IO_BINDING=on
while [ $# -gt 0 ]; do
    case "$1" in
        --execution-provider) EP=$2; shift 2 ;;
        --execution-provider=*) EP=${1#*=}; shift ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --bench-models) BENCH_MODELS=$2; shift 2 ;;
        --io-binding) IO_BINDING=$2; shift 2 ;;
        --io-binding=*) IO_BINDING=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$EP" in
    cuda|cpu) ;;
    *) echo "gpu-check: --execution-provider must be cuda or cpu, not $EP" >&2; exit 2 ;;
esac
case "$IO_BINDING" in
    on|off) ;;
    *) echo "gpu-check: --io-binding must be on or off, not $IO_BINDING" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    # Only the processes this script started, by pid.
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
# A signal ends the script through exit, so the EXIT trap stops what it started.
trap 'exit 143' TERM INT

say() { printf 'gpu-check: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# --- the served repository: models/ plus the GPU-sized model ------------------------------
FIXTURE_PYTHON=${FIXTURE_PYTHON:-}
if [ -z "$FIXTURE_PYTHON" ]; then
    FIXTURE_PYTHON=$PYTHON
    [ ! -x .venv/bin/python ] || FIXTURE_PYTHON=.venv/bin/python
fi
REPO="$WORK/models"
cp -R models "$REPO"
"$FIXTURE_PYTHON" fixtures/make_gpu_model.py --out "$REPO" 2>/dev/null \
    || die "fixtures/make_gpu_model.py failed (FIXTURE_PYTHON=$FIXTURE_PYTHON needs numpy)"
# The worker under test's copy, with io_binding set in every model's config.toml.
REPO_TEST="$WORK/models-test"
cp -R "$REPO" "$REPO_TEST"
for dir in "$REPO_TEST"/*/; do
    [ -f "$dir/1/model.onnx" ] || continue
    printf '\n# Added by scripts/gpu-check.sh --io-binding %s\nio_binding = %s\n' \
        "$IO_BINDING" "$([ "$IO_BINDING" = on ] && echo true || echo false)" >>"$dir/config.toml"
done
ENSEMBLES="$WORK/ensembles.toml"
cat config/ensembles.toml - >"$ENSEMBLES" <<'EOF'

# Added by scripts/gpu-check.sh: the GPU-sized model as an ensemble member.
[[ensemble]]
name = "gpu_soft"
description = "Soft vote of the GPU-sized gpu_mlp (untrained) beside the small mlp"
combiner = "soft_vote"
deadline_ms = 10000
min_members = 2
[[ensemble.member]]
model = "gpu_mlp"
[[ensemble.member]]
model = "mlp"
EOF

CHORUS=${CHORUS_BIN:-target/release/chorus}
if [ ! -x "$CHORUS" ]; then
    say "building $CHORUS"
    cargo build --release -p chorus
fi

# --- the provider under test --------------------------------------------------------------
TEST_ENV=()
TEST_FLAGS=(--execution-provider=cpu)
if [ "$EP" = cuda ]; then
    command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not a machine with an NVIDIA GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
    ORT_VERSION=$(sed -n 's/^onnxruntime==//p' fixtures/requirements.txt)
    [ -n "$ORT_VERSION" ] || die "no onnxruntime pin in fixtures/requirements.txt"
    if [ ! -x .venv-gpu/bin/python ]; then
        "$PYTHON" -m venv .venv-gpu
    fi
    say "installing onnxruntime-gpu==$ORT_VERSION into .venv-gpu"
    .venv-gpu/bin/pip install --quiet "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION"
    GPU_LIB=$(ls .venv-gpu/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$ORT_VERSION" 2>/dev/null | head -n1)
    [ -n "$GPU_LIB" ] || die "onnxruntime-gpu installed no libonnxruntime.so.$ORT_VERSION"
    # The CUDA/cuDNN wheels' libraries, for the provider library ORT loads at session creation.
    NV_LIBS=$(ls -d .venv-gpu/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null | sed "s|^|$ROOT/|" | paste -sd: -)
    TEST_ENV=(ORT_DYLIB_PATH="$ROOT/$GPU_LIB" LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    TEST_FLAGS=(--execution-provider=cuda --require-provider)
fi

# Waits for a line starting with $2 in file $1 (written by pid $3); prints the line.
await_line() {
    local file=$1 prefix=$2 pid=$3 deadline=$((SECONDS + 120)) line
    while [ $SECONDS -lt $deadline ]; do
        line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "${file%.out}.err" >&2; die "process $pid exited before: $prefix"; }
        sleep 0.2
    done
    die "no '$prefix' within 120s (see ${file%.out}.err)"
}

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# start_side NAME REPO ENV... -- FLAGS...: a worker serving the whole repository REPO and a
# coordinator in front of it; sets SIDE_HTTP to the coordinator's address.
start_side() {
    local name=$1 repo=$2 env=() flags=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    flags=("$@")
    env "${env[@]}" RUST_LOG=warn "$CHORUS" worker --listen=127.0.0.1:0 --worker-id="w-$name" \
        --model-repository="$repo" "${flags[@]}" >"$WORK/w-$name.out" 2>"$WORK/w-$name.err" &
    PIDS+=($!)
    local wline
    wline=$(await_line "$WORK/w-$name.out" "chorus-worker ready" $!)
    RUST_LOG=warn "$CHORUS" coordinator --http-addr=127.0.0.1:0 --grpc-addr=127.0.0.1:0 \
        --admin-addr=127.0.0.1:0 --ensembles="$ENSEMBLES" \
        --worker="$(field "$wline" rpc_addr)" >"$WORK/c-$name.out" 2>"$WORK/c-$name.err" &
    PIDS+=($!)
    local cline
    cline=$(await_line "$WORK/c-$name.out" "chorus-coordinator listening" $!)
    SIDE_HTTP=$(field "$cline" http_addr)
    local deadline=$((SECONDS + 60))
    until "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('http://$SIDE_HTTP/v2/health/ready', timeout=2)" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || die "$name cluster not ready within 60s (see $WORK/w-$name.err)"
        sleep 0.2
    done
    say "$name cluster ready at $SIDE_HTTP (${flags[*]})"
}

# "ref" is the CPU reference, "test" the provider under test (also CPU with --execution-provider
# cpu: then the check exercises the whole flow and every tolerance is met exactly).
start_side ref "$REPO" -- --execution-provider=cpu
CPU_HTTP=$SIDE_HTTP
start_side test "$REPO_TEST" "${TEST_ENV[@]}" -- "${TEST_FLAGS[@]}"
say "worker under test: io_binding $IO_BINDING for every model"
TEST_HTTP=$SIDE_HTTP

# --- answers -------------------------------------------------------------------------------
say "comparing every ensemble and model on the 450 test rows ($EP vs cpu)"
"$PYTHON" - "$CPU_HTTP" "$TEST_HTTP" "$EP" "$REPO" "$ENSEMBLES" <<'PY'
import json, sys, tomllib, urllib.request
from pathlib import Path

cpu, test, ep, repo, ensembles_file = sys.argv[1:6]
x = json.loads(Path("fixtures/digits/expected.json").read_text())["x"]
ensembles = [e["name"] for e in tomllib.loads(Path(ensembles_file).read_text())["ensemble"]]
# The meta-model takes member probabilities, not digits rows: it is checked through digits_fusion.
models = sorted(p.name for p in Path(repo).iterdir() if (p / "1" / "model.onnx").exists() and p.name != "stacker")

def digits_input(name):
    """Whether `name` takes the digits rows: one FP32 input called `input`, 64 features."""
    with urllib.request.urlopen(f"http://{cpu}/v2/models/{name}", timeout=30) as reply:
        inputs = json.load(reply)["inputs"]
    return [(i["name"], i["datatype"], i["shape"][-1]) for i in inputs] == [("input", "FP32", 64)]

# Models for other data (the bring-your-own samples: cancer_*) are left to their own tests.
skipped = [m for m in models if not digits_input(m)]
models = [m for m in models if m not in skipped]
if skipped:
    print(f"gpu-check: not on digits rows, not compared: {', '.join(skipped)}", file=sys.stderr)

def tolerance(name):
    if "int8" in name:
        return 5e-2, 0.99
    if "fp16" in name:
        return 5e-3, 0.99
    return 1e-4, 1.0

def infer(addr, name):
    outputs = {}
    for start in range(0, len(x), 64):
        rows = x[start:start + 64]
        body = {"inputs": [{"name": "input", "shape": [len(rows), 64], "datatype": "FP32",
                            "data": [v for r in rows for v in r]}]}
        request = urllib.request.Request(f"http://{addr}/v2/models/{name}/infer",
                                         json.dumps(body).encode(), {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            for output in json.load(reply)["outputs"]:
                outputs.setdefault(output["name"], []).extend(output["data"])
    return outputs

failed = []
print(f"{'model / ensemble':20s} {'max |d|':>10s} {'tolerance':>10s} {'labels':>8s}  result")
for name in ensembles + models:
    a, b = infer(cpu, name), infer(test, name)
    limit, share = tolerance(name)
    same = sum(p == q for p, q in zip(a["label"], b["label"])) / len(a["label"])
    diff = max((abs(p - q) for k in a if k != "label" for p, q in zip(a[k], b[k])), default=0.0)
    ok = diff <= limit and same >= share and set(a) == set(b)
    failed += [] if ok else [name]
    print(f"{name:20s} {diff:10.2e} {limit:10.0e} {same:8.2%}  {'ok' if ok else 'FAIL'}")
if failed:
    sys.exit(f"gpu-check: {ep} answers out of tolerance: {', '.join(failed)}")
PY

# --- throughput -----------------------------------------------------------------------------
say "benchmarking ($DURATION per run, concurrency $CONCURRENCY, rows $ROWS)"
IFS=, read -r -a BENCH <<<"$BENCH_MODELS"
for model in "${BENCH[@]}"; do
    for side in ref test; do
        addr=$CPU_HTTP
        [ "$side" = ref ] || addr=$TEST_HTTP
        RUST_LOG=warn "$CHORUS" bench --target="http://$addr" --model="$model" \
            --concurrency="$CONCURRENCY" --rows="$ROWS" --duration="$DURATION" \
            --warmup="$WARMUP" --pause=0s --verify-every=0 \
            --json-out="$WORK/bench-$side-$model.json" >"$WORK/bench.log" 2>&1 \
            || { cat "$WORK/bench.log" >&2; die "chorus bench failed for $model on $side"; }
    done
done
"$PYTHON" - "$WORK" "$EP" "$BENCH_MODELS" <<'PY'
import json, sys
from pathlib import Path

work, ep, models = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
head = (f"| model / ensemble | rows | cpu req/s | {ep} req/s | cpu p50 µs | {ep} p50 µs "
        f"| {ep}/cpu throughput |")
print(head)
print("|---|---|---|---|---|---|---|")
bad = []
for model in models:
    runs = {side: json.loads((work / f"bench-{side}-{model}.json").read_text())["runs"]
            for side in ("ref", "test")}
    for cpu_run, ep_run in zip(runs["ref"], runs["test"]):
        for run in (cpu_run, ep_run):
            errors = run["errors"]
            if errors["by_status"] or any(errors[k] for k in ("transport", "timeout")):
                bad.append(model)
        c, g = cpu_run["results"], ep_run["results"]
        print(f"| `{model}` | {cpu_run['rows']} | {c['requests_per_s']:.0f} | {g['requests_per_s']:.0f} "
              f"| {c['latency_us']['p50']} | {g['latency_us']['p50']} "
              f"| {g['requests_per_s'] / max(c['requests_per_s'], 1e-9):.2f}x |")
if bad:
    sys.exit(f"gpu-check: benchmark runs with errors: {', '.join(sorted(set(bad)))}")
PY
say "ok: $EP answers (io_binding $IO_BINDING) match cpu within tolerance"
