#!/usr/bin/env python3
"""DINOv2 ViT-S/14 embeddings per second in PyTorch (transformers Dinov2Model), timed.

Called by `cargo bench -p unoflow-models --bench dinov2_cpu`, which times unoflow on the same
model in the same run. Uses the real weights in ../shared/models/dinov2-small when given with
--weights, random weights otherwise. Prints one JSON line: {"images_per_s": ..., "median_s": ...}.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Dinov2Config, Dinov2Model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--weights", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = (Dinov2Model.from_pretrained(args.weights) if args.weights else Dinov2Model(Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518))).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    times = []
    with torch.no_grad():
        model(pixel_values=x)
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(pixel_values=x)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"images_per_s": args.batch / median, "median_s": median}))


if __name__ == "__main__":
    main()
