#!/usr/bin/env python3
"""One FLUX transformer forward in PyTorch (diffusers FluxTransformer2DModel, which is the UNO
forward without LoRA when the reference tokens are appended to the image tokens), timed.

Called by `cargo bench -p unoflow-models --bench flux_cpu`, which runs unoflow's forward on the
same configuration in the same run. Prints one JSON line: {"median_s": ..., "times_s": [...]}.

    python tools/bench/flux_forward.py --hidden 256 --heads 4 --double 4 --single 4 \
        --txt 256 --img 1024 --ref 1024 --threads 2 --repeats 5 [--device cuda --dtype bf16]
"""
import argparse
import json
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser()
    for name, default in [("hidden", 256), ("heads", 4), ("double", 4), ("single", 4), ("txt", 256), ("img", 1024), ("ref", 1024),
                          ("threads", 2), ("repeats", 5), ("warmup", 1), ("context", 4096), ("vec", 768)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from diffusers import FluxTransformer2DModel

    head_dim = args.hidden // args.heads
    rope = head_dim // 8 * 2
    axes = (head_dim - 2 * rope, rope, rope) if head_dim == 128 else (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    # Built on the meta device, cast, then allocated where it runs: a FLUX.1-dev-sized model
    # (12 B parameters) never exists in f32 or on the host.
    with torch.device("meta"):
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=args.double, num_single_layers=args.single,
            attention_head_dim=head_dim, num_attention_heads=args.heads, joint_attention_dim=args.context,
            pooled_projection_dim=args.vec, guidance_embeds=True, axes_dims_rope=axes,
        )
    model = model.to(dtype=dtype).to_empty(device=args.device).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)

    n_img = args.img + args.ref
    side = int(round(args.img ** 0.5))
    ids = torch.zeros(n_img, 3)
    ids[: args.img, 1] = torch.arange(args.img).div(side, rounding_mode="floor").float()
    ids[: args.img, 2] = torch.arange(args.img).remainder(side).float()
    ids[args.img:, 1] = side + torch.arange(args.ref).div(side, rounding_mode="floor").float()
    ids[args.img:, 2] = side + torch.arange(args.ref).remainder(side).float()
    inputs = dict(
        hidden_states=torch.randn(1, n_img, 64, dtype=dtype, device=args.device),
        encoder_hidden_states=torch.randn(1, args.txt, args.context, dtype=dtype, device=args.device),
        pooled_projections=torch.randn(1, args.vec, dtype=dtype, device=args.device),
        timestep=torch.tensor([0.5], dtype=dtype, device=args.device),
        guidance=torch.tensor([4.0], dtype=dtype, device=args.device),
        img_ids=ids.to(args.device),
        txt_ids=torch.zeros(args.txt, 3, device=args.device),
        return_dict=False,
    )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for _ in range(args.warmup):
            model(**inputs)
        sync()
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(**inputs)
            sync()
            times.append(time.perf_counter() - start)
    out = {"median_s": statistics.median(times), "times_s": times}
    if args.device.startswith("cuda"):
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
