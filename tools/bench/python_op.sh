#!/usr/bin/env bash
# The `python` operator's cost as a user meets it: `unoflow run` of a DAG that reads N JSON-lines
# rows and calls a trivial function on them (batch_size rows per call), against the same function
# called by plain Python over pyarrow batches of the same file, in the same run. Both sides start
# a process and read the file; unoflow also gives rows ids, stores and commits them.
#
#   tools/bench/python_op.sh [ROWS] [BATCH]      # defaults: 200000 rows, 1024 per batch
set -euo pipefail
rows=${1:-200000}
batch=${2:-1024}
unoflow=${UNOFLOW:-target/debug/unoflow}
unoflow=$(realpath "$unoflow")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir/rows.jsonl" "$rows" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"n": i, "name": f"item {i}"}) + "\n")
PY
cat > "$dir/double.py" <<'PY'
import pyarrow.compute as pc

def double(batch):
    return {"doubled": pc.multiply(batch.column("n"), 2)}
PY
cat > "$dir/dag.toml" <<EOF2
[dag]
name = "bench"
workspace = "ws"

[nodes.rows]
op = "read"
path = "rows.jsonl"
format = "jsonl"

[nodes.doubled]
op = "python"
inputs = ["rows"]
script = "double.py"
function = "double"
outputs = { doubled = "int64" }
batch_size = $batch
EOF2
cat > "$dir/plain.py" <<'PY'
import sys
import pyarrow.json as pj
sys.path.insert(0, sys.argv[2])
from double import double
table = pj.read_json(sys.argv[1])
total = sum(len(double(b)["doubled"]) for b in table.to_batches(max_chunksize=int(sys.argv[3])))
assert total == table.num_rows
PY
cd "$dir"
t0=$(date +%s.%N); python3 plain.py rows.jsonl "$dir" "$batch"; t1=$(date +%s.%N)
"$unoflow" run dag.toml -q >/dev/null; t2=$(date +%s.%N)
rm -rf ws
"$unoflow" run dag.toml -q --only rows >/dev/null
t3=$(date +%s.%N); "$unoflow" run dag.toml -q >/dev/null; t4=$(date +%s.%N)
python3 - "$t0" "$t1" "$t2" "$t3" "$t4" "$rows" "$batch" <<'PY'
import sys
t0, t1, t2, t3, t4 = (float(x) for x in sys.argv[1:6])
rows, batch = sys.argv[6], sys.argv[7]
plain, whole, node = t1 - t0, t2 - t1, t4 - t3
print(f"{rows} rows, {batch} per call: plain Python {plain:.2f} s; unoflow run, read + python node {whole:.2f} s "
      f"({whole / plain:.2f}x); the python node alone (read cached) {node:.2f} s ({node / plain:.2f}x)")
PY
