#!/usr/bin/env python3
"""The `unoflow generate --tiny` pipeline in PyTorch with the same tiny configuration, timed:
T5 (512 ids) and CLIP-L-style (77 ids) text encoding, one 512² reference through the
autoencoder's encoder, 4 Euler steps of FLUX with the reference tokens appended, and the
decode. diffusers' AutoencoderKL with 4 levels of 32 channels is the BFL autoencoder's
architecture; the transformer is diffusers' FluxTransformer2DModel.

Called by `cargo bench -p unoflow-operators --bench generate_cpu`. Prints {"median_s": ...}.
"""
import argparse
import json
import math
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False)).eval()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=525, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77, eos_token_id=524)).eval()
    flux = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=32,
                                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                  guidance_embeds=True, axes_dims_rope=(8, 12, 12)).eval()
    ae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                       up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                       layers_per_block=1, latent_channels=16, norm_num_groups=32).eval()
    s = args.size
    side = s // 16

    def once():
        with torch.no_grad():
            txt = t5(input_ids=torch.randint(0, 100, (1, 512))).last_hidden_state
            y = clip(input_ids=torch.randint(0, 524, (1, 77))).pooler_output
            ref = ae.encode(torch.rand(1, 3, s, s) * 2 - 1).latent_dist.mean
            ref_tokens = ref.reshape(1, 16, side, 2, side, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, side * side, 64)
            ids = torch.zeros(2 * side * side, 3)
            grid = torch.arange(side * side)
            ids[: side * side, 1], ids[: side * side, 2] = grid.div(side, rounding_mode="floor").float(), grid.remainder(side).float()
            ids[side * side:, 1], ids[side * side:, 2] = ids[: side * side, 1] + side, ids[: side * side, 2] + side
            img = torch.randn(1, side * side, 64)
            ts = torch.linspace(1, 0, args.steps + 1)
            for t_curr, t_prev in zip(ts[:-1], ts[1:]):
                out = flux(hidden_states=torch.cat([img, ref_tokens], 1), encoder_hidden_states=txt, pooled_projections=y,
                           timestep=t_curr[None], img_ids=ids, txt_ids=torch.zeros(512, 3), guidance=torch.tensor([4.0]),
                           return_dict=False)[0][:, : side * side]
                img = img + (t_prev - t_curr) * out
            latent = img.reshape(1, side, side, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 2 * side, 2 * side)
            ae.decode(latent)

    once()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(times), "times_s": times}))


if __name__ == "__main__":
    main()
