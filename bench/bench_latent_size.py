"""Benchmark: what v2's candidate latents would cost the micro UNet, side by side with v1's.

A VAE with one downsampling fewer (`python -m micro.pretrain --stage vae2 --vae2-levels 2`)
keeps small shapes that 16x16 latents lose (docs/micro_model.md), but its latents have four
times the positions; 16 latent channels at 16x16 (`--vae2-latent-channels 16`) hold as many
numbers at v1's positions. This times one pretraining update (forward, backward, AdamW) of
each candidate UNet, and one sampling step as the exercise scripts take it (nine pictures with
guidance), in one run, and prints the ratios to v1 and the parameter counts.

    python bench/bench_latent_size.py                 # about a minute on 2 cores
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from micro import pretrain  # noqa: E402

def update_seconds(unet, batch, text_width, updates):
    optimizer = torch.optim.AdamW(unet.parameters())
    config = unet.config
    latents = torch.randn(batch, config.in_channels, config.sample_size, config.sample_size)
    prompt = torch.randn(batch, 77, text_width)
    timesteps = torch.randint(0, 1000, (batch,))

    def update():
        loss = (unet(latents, timesteps, prompt).sample - latents).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update()  # warm-up
    started = time.perf_counter()
    for _ in range(updates):
        update()
    return (time.perf_counter() - started) / updates


def sampling_seconds(unet, batch, text_width, calls):
    """One denoising step's UNet call with guidance (2 x batch), as the exercise scripts sample."""
    config = unet.config
    latents = torch.randn(2 * batch, config.in_channels, config.sample_size, config.sample_size)
    prompt = torch.randn(2 * batch, 77, text_width)
    with torch.no_grad():
        unet(latents, 500, prompt)  # warm-up
        started = time.perf_counter()
        for _ in range(calls):
            unet(latents, 500, prompt)
    return (time.perf_counter() - started) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--updates", type=int, default=4, help="timed updates per UNet")
    parser.add_argument("--outer-channels", type=int, default=32, help="the 32x32 level's width")
    args = parser.parse_args()
    defaults = pretrain.build_parser().parse_args([])
    channels, width, batch = list(defaults.unet_channels), defaults.text_width, defaults.unet_batch
    candidates = [("v1: 16x16x4 latents", pretrain.make_unet(channels, width)),
                  ("v2's unet16 layout, 16x16x4", pretrain.make_unet(channels, width, pretrain.UNET16_BLOCKS)),
                  ("unet16 layout, 16x16x16 latents", pretrain.make_unet(channels, width, pretrain.UNET16_BLOCKS, 16)),
                  (f"32x32x4, a {args.outer_channels}-wide level outside v1's",
                   pretrain.make_unet([args.outer_channels] + channels, width, pretrain.UNET32_CONV_BLOCKS, 4, 32)),
                  ("32x32x4, the same with unet16's layout inside",
                   pretrain.make_unet([args.outer_channels] + channels, width, pretrain.UNET32_BLOCKS, 4, 32))]
    print(f"torch threads: {torch.get_num_threads()}; training at batch {batch}; sampling nine pictures with guidance")
    rates, sampling = [], []
    for name, unet in candidates:
        rates.append(update_seconds(unet, batch, width, args.updates))
        sampling.append(sampling_seconds(unet, 9, width, 4 * args.updates))
        print(f"{name:48s} {sum(p.numel() for p in unet.parameters()) / 1e6:5.2f}M weights "
              f"{rates[-1]:7.3f} s/update ({rates[-1] / rates[0]:.2f}x v1) "
              f"{sampling[-1]:7.3f} s/sampling step ({sampling[-1] / sampling[0]:.2f}x v1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
