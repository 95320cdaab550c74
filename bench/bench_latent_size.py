"""Benchmark: what 32x32 latents would cost the micro UNet, side by side with v1's 16x16.

A VAE with one downsampling fewer (`python -m micro.pretrain --stage vae2 --vae2-levels 2`)
keeps small shapes that 16x16 latents lose (docs/micro_model.md), but its latents have four
times the positions. This times one pretraining update (forward, backward, AdamW) of v1's UNet
on 16x16 latents and of the same UNet with a 32x32 level added outside it, in one run, and
prints their ratio and the parameter counts.

    python bench/bench_latent_size.py                 # about a minute on 2 cores
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from micro import pretrain  # noqa: E402

# v1's levels with a 32x32 level outside them: convolutions only there, as at v1's 16x16
UNET32_BLOCKS = dict(down_block_types=("DownBlock2D",) + pretrain.UNET_BLOCKS["down_block_types"],
                     up_block_types=pretrain.UNET_BLOCKS["up_block_types"] + ("UpBlock2D",))


def update_seconds(unet, latent_size, batch, text_width, updates):
    optimizer = torch.optim.AdamW(unet.parameters())
    latents = torch.randn(batch, 4, latent_size, latent_size)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--updates", type=int, default=4, help="timed updates per UNet")
    parser.add_argument("--outer-channels", type=int, default=32, help="the 32x32 level's width")
    args = parser.parse_args()
    defaults = pretrain.build_parser().parse_args([])
    channels, width, batch = list(defaults.unet_channels), defaults.text_width, defaults.unet_batch
    candidates = [("v1: 16x16 latents", pretrain.make_unet(channels, width), 16),
                  (f"32x32 latents, a {args.outer_channels}-wide level outside v1's",
                   pretrain.make_unet([args.outer_channels] + channels, width, UNET32_BLOCKS), 32)]
    print(f"torch threads: {torch.get_num_threads()}, batch {batch}")
    rates = []
    for name, unet, size in candidates:
        rates.append(update_seconds(unet, size, batch, width, args.updates))
        print(f"{name:48s} {sum(p.numel() for p in unet.parameters()) / 1e6:5.2f}M weights "
              f"{rates[-1]:7.3f} s/update ({rates[-1] / rates[0]:.2f}x v1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
