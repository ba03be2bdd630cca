#!/usr/bin/env bash
# The rehearsal of dags/uno.toml (tests/recipe.rs's --vars) over an S3 test server, timed with 1,
# 2 and 3 workers (BENCHMARKS.md, "The recipe's rehearsal").
#
#   tools/rehearsal-bench.sh [REPETITIONS]     # needs moto[server] and boto3 (pip), a built unoflow
#
# Everything lives in a temp folder: tiny models from `unoflow model tiny` (the real DINOv2-S
# from ../shared/models/dinov2-small when it is there), DreamBench lists under UNO's names over
# datasets/samples, a VLM stand-in on the OpenAI protocol. Each run gets a fresh workspace on the
# store and a fresh host cache, so it fetches the models as a new host would.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
U="${UNOFLOW:-$ROOT/target/debug/unoflow}"
REPS="${1:-3}"
WORK="$(mktemp -d)"
PORT_S3=$((20000 + RANDOM % 10000)); PORT_VLM=$((PORT_S3 + 1))
E="http://127.0.0.1:$PORT_S3"
cd "$WORK"

moto_server -H 127.0.0.1 -p "$PORT_S3" >/dev/null 2>&1 & MOTO=$!
cat > vlm.py <<'PY'
import http.server, json, sys
class Vlm(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        first = body['messages'][1]['content'] if len(body['messages']) > 1 else body['messages'][0]['content']
        text = " ".join(p.get('text', '') for p in first if p.get('type') == 'text') if isinstance(first, list) else first
        if text.startswith('Locate the'):
            answer = '```json\n[{"bbox_2d": [4, 4, 40, 40], "label": "subject"}]\n```'
        else:
            answer = {1: "[subject]: a toy\n[caption1]: a\n[caption2]: b\n[Break down]: body; face",
                      2: "The same."}.get(len(body['messages']) // 2,
                                          '{"parts": [{"part": "body", "score": 4}, {"part": "face", "score": 4}]}')
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200); self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(out))); self.end_headers(); self.wfile.write(out)
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Vlm).serve_forever()
PY
python3 vlm.py "$PORT_VLM" & VLM=$!
trap 'kill $MOTO $VLM; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT_S3))" 2>/dev/null && break; sleep 0.2; done

export AWS_ENDPOINT_URL=$E AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
put() { # DIR PREFIX: every file under DIR into s3://uno/PREFIX/
    python3 - "$1" "$2" <<'PY'
import boto3, os, sys
s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])
d, prefix = sys.argv[1], sys.argv[2]
for root, _, files in os.walk(d):
    for f in files:
        s3.upload_file(os.path.join(root, f), 'uno', prefix + '/' + os.path.relpath(os.path.join(root, f), d))
PY
}
python3 -c "import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket='uno')"
"$U" model tiny models/flux --kind flux-dev >/dev/null
for k in dinov2 dino clip; do "$U" model tiny "models/$k" --kind "$k" >/dev/null; done
for k in flux dinov2 dino clip; do put "models/$k" "models/$k"; done
DINOV2=s3://uno/models/dinov2
if [ -f "$ROOT/../shared/models/dinov2-small/model.safetensors" ]; then
    put "$ROOT/../shared/models/dinov2-small" models/dinov2-small; DINOV2=s3://uno/models/dinov2-small
fi
mkdir -p ds && cp "$ROOT/datasets/subjects.jsonl" "$ROOT/datasets/objects365_classes.txt" ds/ && put ds datasets
cp -r "$ROOT/datasets/samples" dreambench
python3 - <<'PY'
import json, os
subjects = sorted(os.listdir('dreambench'))
ref = lambda s, f: f"./dreambooth/dataset/{s}/{f}"
scenes = ["in the snow", "on the beach"]
single = [{"prompt": f"a {s.replace('_', ' ')} {w}", "image_paths": [ref(s, "studio.png")]} for s in subjects for w in scenes]
multi = [{"prompt": f"a {a.replace('_', ' ')} and a {b.replace('_', ' ')} {w}",
          "image_paths": [ref(a, "studio.png"), ref(b, "beach.png")]} for a, b in zip(subjects, subjects[1:]) for w in scenes]
json.dump(single, open("dreambench/dreambench_singleip.json", "w"), indent=4)
json.dump(multi, open("dreambench/dreambench_multiip.json", "w"), indent=4)
PY
put dreambench dreambench

export FLUX_DIR=s3://uno/models/flux DINOV2_DIR=$DINOV2 DINO_DIR=s3://uno/models/dino CLIP_DIR=s3://uno/models/clip
export DREAMBENCH_DIR=s3://uno/dreambench VLM_ENDPOINT=http://127.0.0.1:$PORT_VLM/v1
VARS=(--var subjects=2 --var prompts_per_subject=1 --var seeds_per_prompt=1 --var 'resolutions=["64x64"]' --var steps=2
      --var dino_threshold=-1.0 --var ref2_threshold=-1.0 --var train_steps=2 --var train_resolution=64 --var lora_rank=4
      --var eval_prompts=2 --var eval_resolution=32 --var eval_steps=2 --var eval_images=2 --var datasets=s3://uno/datasets)
for rep in $(seq "$REPS"); do
    for w in 1 2 3; do
        export UNOFLOW_CACHE_DIR="$WORK/cache-$w-$rep"
        workers=(); [ "$w" -gt 1 ] && workers=(--workers "$w")
        start=$(date +%s.%N)
        "$U" run "$ROOT/dags/uno.toml" --workspace "s3://uno/ws-$w-$rep" -q "${VARS[@]}" "${workers[@]}" > "run-$w-$rep.log" 2>&1
        end=$(date +%s.%N)
        echo "rep $rep, $w worker(s): $(python3 -c "print(f'{$end - $start:.1f}')") s; $(grep -o '[0-9]* computed, .* row errors' "run-$w-$rep.log")"
    done
done
