"""GFLOP/s of PyTorch's matrix products at the shapes of the FLUX CPU benchmark (the
baseline of `cargo bench -p unoflow-models --bench matmul_cpu`). Prints one JSON object:
{"M×K×N×B": gflops, ...}."""
import argparse
import json
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--shapes", required=True, help="M,K,N,B;M,K,N,B;...")
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
out = {}
for shape in args.shapes.split(";"):
    m, k, n, b = (int(x) for x in shape.split(","))
    a = torch.randn(b, m, k)
    w = torch.randn(b, k, n)
    torch.matmul(a, w)
    reps = max(3, int(4e9 / (2 * m * k * n * b)))
    start = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, w)
    seconds = (time.perf_counter() - start) / reps
    out[shape] = 2 * m * k * n * b / seconds / 1e9
print(json.dumps(out))
