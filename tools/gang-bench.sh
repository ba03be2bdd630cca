#!/usr/bin/env bash
# Time per training step of `train_lora` alone and trained by a gang of 2 worker processes on
# this host (BENCHMARKS.md, "Data-parallel training"), both measured in the same invocation.
#
#   tools/gang-bench.sh [STEPS] [RESOLUTION]      # a built unoflow (UNOFLOW=path to pick one)
#
# ALONE_ARGS are the run alone's flags (`--device cuda`), GANG_ARGS the gang's (default
# `--workers 2 --lease-s 4`; `--devices all --lease-s 4` on a multi-GPU host).
#
# The tiny random FLUX (no model_dir), datasets/samples as pairs, 4 micro-batches of 1 per step
# (so 2 peers take 2 each). Per step = the training node's seconds in the leader's run record
# (model load and input decoding included) over the steps; wall = the whole command.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
U="${UNOFLOW:-$ROOT/target/debug/unoflow}"
STEPS="${1:-8}"
RES="${2:-128}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
cat > dag.toml <<EOF
[dag]
name = "gang_bench"
seed = 1
workspace = "ws"

[nodes.photos]
op = "read"
path = "$ROOT/datasets/samples"
format = "images"

[nodes.pairs]
op = "sql"
inputs = ["photos"]
query = "SELECT row_id, image AS ref_image, image AS target_image, 'a photo' AS prompt FROM photos"

[nodes.train]
op = "train_lora"
inputs = ["pairs"]
rank = 16
steps = $STEPS
checkpoint_every = $STEPS
gradient_accumulation = 4
learning_rate = 0.0001
resolution = $RES
EOF

# The train node's seconds in the record that has them (the leader's, for a gang).
train_seconds() {
  "$U" runs --dag dag.toml --json | python3 -c '
import json, sys
nodes = [n for r in json.load(sys.stdin) for n in r["nodes"] if n["name"] == "train" and n["status"] == "computed"]
led = [n["seconds"] for n in nodes if n.get("peers")]
print(max(led or [n["seconds"] for n in nodes]))'
}

measure() {
  rm -rf ws
  local start end
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$U" run dag.toml -q "$@" >/dev/null
  end=$(date +%s.%N)
  local train
  train=$(train_seconds)
  python3 -c "print(f'{$train / $STEPS:.3f} {$end - $start:.2f}')"
}

# shellcheck disable=SC2086
read -r alone_step alone_wall < <(measure ${ALONE_ARGS:-})
# shellcheck disable=SC2086
read -r gang_step gang_wall < <(measure ${GANG_ARGS:---workers 2 --lease-s 4})
echo "steps $STEPS, resolution $RES, $(nproc) cores"
printf '%-22s %10s %10s\n' "" "s/step" "wall s"
printf '%-22s %10s %10s\n' "alone (1 process)" "$alone_step" "$alone_wall"
printf '%-22s %10s %10s\n' "gang (${GANG_ARGS:---workers 2})" "$gang_step" "$gang_wall"
python3 -c "print(f'speed-up per step: {$alone_step / $gang_step:.2f}x')"
