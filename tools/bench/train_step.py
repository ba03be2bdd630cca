#!/usr/bin/env python3
"""One UNO LoRA training step in PyTorch on the CPU (forward + backward + clip + AdamW), timed,
with peak resident memory. The model is the UNO reference's `Flux` with its LoRA processors
(from a UNO checkout), at the configuration `cargo bench -p unoflow-models --bench train_cpu`
uses for unoflow's step in the same run. Prints one JSON line.

    python tools/bench/train_step.py --uno-repo /tmp/UNO --threads 2 --repeats 3
"""
import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uno-repo", required=True)
    for name, default in [("hidden", 256), ("heads", 4), ("double", 4), ("single", 4), ("rank", 16), ("txt", 256), ("img", 1024),
                          ("ref", 1024), ("threads", 2), ("repeats", 3)]:
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.uno_repo).resolve()))
    from uno.flux.model import Flux, FluxParams
    from uno.flux.modules.layers import DoubleStreamBlockLoraProcessor, LoRALinearLayer, SingleStreamBlockLoraProcessor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head_dim = args.hidden // args.heads
    axes = [head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8]
    config = dict(in_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=args.hidden, mlp_ratio=4.0, num_heads=args.heads,
                  depth=args.double, depth_single_blocks=args.single, axes_dim=axes, theta=10_000, qkv_bias=True, guidance_embed=True)
    model = Flux(FluxParams(**config)).float()
    mlp = int(args.hidden * 4.0)
    for block in model.double_blocks:
        block.set_processor(DoubleStreamBlockLoraProcessor(dim=args.hidden, rank=args.rank))
    for block in model.single_blocks:
        proc = SingleStreamBlockLoraProcessor(dim=args.hidden, rank=args.rank)
        proc.proj_lora = LoRALinearLayer(args.hidden + mlp, args.hidden, args.rank)
        block.set_processor(proc)
    for name, param in model.named_parameters():
        param.requires_grad_(".processor." in name)
    lora = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    side = int(round(args.img ** 0.5))
    ids = torch.zeros(1, args.img, 3)
    ids[0, :, 1] = torch.arange(args.img).div(side, rounding_mode="floor").float()
    ids[0, :, 2] = torch.arange(args.img).remainder(side).float()
    ref_ids = ids.clone()
    ref_ids[..., 1:] += side
    x_1, x_0 = torch.randn(1, args.img, 64), torch.randn(1, args.img, 64)
    ref, txt, vec = torch.randn(1, args.ref, 64), torch.randn(1, args.txt, 4096), torch.randn(1, 768)
    t = torch.tensor([0.5])

    def step():
        x_t = (1 - t[:, None, None]) * x_1 + t[:, None, None] * x_0
        pred = model(img=x_t, img_ids=ids, txt=txt, txt_ids=torch.zeros(1, args.txt, 3), y=vec, timesteps=t,
                     guidance=torch.ones(1), ref_img=[ref], ref_img_ids=[ref_ids])
        loss = F.mse_loss(pred, x_0 - x_1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(times), "times_s": times, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib():
    """This process's resident high-water mark. Not `getrusage`'s ru_maxrss: Linux carries that
    over from the parent through fork, so a child started by a large process reports the parent's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
