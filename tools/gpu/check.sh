#!/usr/bin/env bash
# The GPU check: every reference fixture through `unoflow model check` on CUDA, then one
# FLUX.1-dev-sized forward (hidden 3072, 19 + 38 blocks, random bf16 weights) in unoflow and in
# PyTorch on the same GPU, with times, ratios and peak memory as the last lines.
#
# On a machine with one NVIDIA H100/H200, its driver, NVRTC and the CUDA headers, and a Python
# with torch and diffusers (no downloads: every model is random or a shipped fixture):
#
#   cargo build --release --features cuda
#   cargo bench -p unoflow-models --features cuda --bench flux_gpu --no-run --profile release
#   tools/gpu/check.sh                       # or: tools/gpu/check.sh BIN BENCH_BIN
#
# Budget: about 4 minutes on an H100 (model construction dominates; the training gang about one). Exit status 1 if a
# fixture is out of tolerance or a step fails; the timing table is printed either way.
set -uo pipefail
cd "$(dirname "$0")/../.."

BIN=${1:-target/release/unoflow}
BENCH=${2:-$(ls -t target/release/deps/flux_gpu-* 2>/dev/null | grep -v '\.d$' | head -1)}
PY=${PYTHON:-python3}
F=operators/models/fixtures
OUT=${OUT:-$(mktemp -d)}
status=0

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release --features cuda"; exit 1; }

# ---------------------------------------------------------------------------------------------
echo "== 1. fixtures on CUDA (f32 within 1e-4, bf16 within 2e-2; T5 bf16 within 5e-2: its residual stream grows large and bf16 keeps 8 bits of it)"
check() { # KIND WEIGHTS FIXTURE [extra args]
    local kind=$1 weights=$2 fixture=$3
    shift 3
    for spec in "f32 1e-4" "bf16 2e-2"; do
        local dtype=${spec% *} tol=${spec#* }
        [ "$kind" = t5 ] && [ "$dtype" = bf16 ] && tol=5e-2
        local out rc
        out=$("$BIN" model check "$kind" --weights "$weights" --fixture "$fixture" --dtype "$dtype" --tol "$tol" --device cuda "$@" 2>&1)
        rc=$?
        printf '%-48s %-5s %s\n' "${fixture#"$F"/}" "$dtype" "$(echo "$out" | tail -1)"
        [ $rc -eq 0 ] || status=1
    done
}
for f in noref ref1 ref2_pe_w ref2_sizes batch2_ref1; do check flux $F/flux/tiny.safetensors $F/flux/$f.fixture.safetensors; done
check flux $F/flux/tiny_schnell.safetensors $F/flux/schnell_ref1.fixture.safetensors
check flux $F/flux/tiny_lora.safetensors $F/flux/lora_ref2.fixture.safetensors --lora $F/flux/tiny_lora.lora.safetensors
check ae $F/ae/tiny.safetensors $F/ae/tiny.fixture.safetensors
check ae $F/ae/tiny_diffusers $F/ae/tiny.fixture.safetensors
check t5 $F/t5/tiny/model.safetensors $F/t5/tiny.fixture.safetensors
check clip_text $F/clip_text/tiny/model.safetensors $F/clip_text/tiny.fixture.safetensors
check clip_text $F/clip_text/tiny_legacy_eos/model.safetensors $F/clip_text/tiny_legacy_eos.fixture.safetensors
check clip $F/clip/tiny/model.safetensors $F/clip/tiny.fixture.safetensors
check dino $F/dino/tiny/model.safetensors $F/dino/tiny.fixture.safetensors
for f in native_grid_batch2 interpolated_up interpolated_down; do check dinov2 $F/dinov2/tiny/model.safetensors $F/dinov2/$f.fixture.safetensors; done
check dinov2 $F/dinov2/tiny_swiglu/model.safetensors $F/dinov2/swiglu.fixture.safetensors

# ---------------------------------------------------------------------------------------------
# Runs a command while polling the GPU's used memory every 20 ms; prints the command's last
# stdout line, and the peak above the idle level (MiB) on the next line.
with_peak() {
    local idle log
    idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
    log=$OUT/mem.$RANDOM
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 20 >"$log" &
    local monitor=$!
    local last
    last=$("$@" 2>"$OUT/stderr.$RANDOM" | tail -1)
    kill $monitor 2>/dev/null
    wait $monitor 2>/dev/null
    echo "$last"
    echo $(($(sort -n "$log" | tail -1) - idle))
}

json() { "$PY" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2" 2>/dev/null || echo nan; }

echo "== 2-3. FLUX.1-dev-sized forward, bf16, median of 10 after warm-up"
declare -A ours theirs ours_mem theirs_mem
for case in ref512 t2i1024; do
    if [ "$case" = ref512 ]; then img=1024 ref=1024; else img=4096 ref=0; fi
    if [ -x "$BENCH" ]; then
        mapfile -t r < <(with_peak "$BENCH" --case $case)
        ours[$case]=$(json "${r[0]}" median_s)
        ours_mem[$case]=${r[1]}
    else
        echo "missing the flux_gpu bench binary (cargo bench -p unoflow-models --features cuda --bench flux_gpu --no-run --profile release)"
        ours[$case]=nan ours_mem[$case]=nan status=1
    fi
    mapfile -t r < <(with_peak "$PY" tools/bench/flux_forward.py --hidden 3072 --heads 24 --double 19 --single 38 \
        --txt 512 --img $img --ref $ref --device cuda --dtype bf16 --warmup 2 --repeats 10)
    theirs[$case]=$(json "${r[0]}" median_s)
    theirs_mem[$case]=${r[1]}
    echo "$case: unoflow ${ours[$case]} s, PyTorch ${theirs[$case]} s"
done

echo "== 5. data-parallel training: one step of train_lora alone and by a gang (every GPU, or 2 workers sharing one)"
gpus=$(nvidia-smi --list-gpus | wc -l)
if [ "$gpus" -gt 1 ]; then gang="--devices all --lease-s 4"; else gang="--workers 2 --device cuda --lease-s 4"; fi
UNOFLOW=$BIN ALONE_ARGS="--device cuda" GANG_ARGS="$gang" timeout 300 tools/gang-bench.sh 8 256 || status=1

echo "== 4. results ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(date -u +%F))"
printf '%-34s %12s %12s %8s %14s %14s\n' case "unoflow s" "PyTorch s" ratio "unoflow MiB" "PyTorch MiB"
for case in ref512 t2i1024; do
    label=$([ $case = ref512 ] && echo "512² + one 512² ref (512+1024+1024)" || echo "1024², no ref (512+4096)")
    ratio=$("$PY" -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{a / b:.2f}')" "${ours[$case]}" "${theirs[$case]}" 2>/dev/null || echo nan)
    printf '%-34s %12s %12s %8s %14s %14s\n' "$label" "${ours[$case]}" "${theirs[$case]}" "$ratio" "${ours_mem[$case]}" "${theirs_mem[$case]}"
done
exit $status
