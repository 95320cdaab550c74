"""Benchmark: micro on a CPU, channels-last memory against torch's default layout, and batch sizes.

`common/pipeline.load_pipeline` puts the UNet and the VAE in channels-last memory on a CPU, and the
scripts draw micro's small pictures in batches of 16 (`common/cli.SMALL_IMAGE`). This measures both,
side by side in one run, on the micro model and its shipped LoRA (fused, as the scripts draw):

* drawing: seconds per picture at the scripts' steps and guidance, batch 4 and 16, each layout;
* training: one exercise3b-shaped update (forward and backward of the UNet with micro's default
  LoRA on 2 latents), each layout.

Each setting runs twice, interleaved, so that a slow moment of the machine shows as a spread.

    python bench/bench_cpu_layout.py
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main():
    import torch

    from common.adapters import fuse_lora, load_lora
    from common.base_model import MICRO, MICRO_FOLDER, REPO as ROOT, SAMPLING_STEPS, TRAINING_DEFAULTS
    from common.generation import generate
    from common.lora_training import add_lora
    from common.pipeline import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="pictures drawn per setting")
    parser.add_argument("--updates", type=int, default=20, help="training updates timed per setting")
    args = parser.parse_args()
    layouts = {"default": torch.contiguous_format, "channels last": torch.channels_last}

    pipe = load_pipeline(str(MICRO_FOLDER), torch.device("cpu"), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load_lora(pipe, ROOT / "models" / "micro_release" / "fabric_lora")
    fuse_lora(pipe)
    prompts = ["a dress made of sks african fabric pattern, fashion photography"] * args.images
    drawing = {}
    for _ in range(2):
        for layout, memory_format in layouts.items():
            pipe.unet.to(memory_format=memory_format)
            pipe.vae.to(memory_format=memory_format)
            for batch_size in (4, 16):
                started = time.perf_counter()
                generate(pipe, prompts, list(range(args.images)), steps=SAMPLING_STEPS[MICRO], resolution=64,
                         guidance=7.5, batch_size=batch_size, desc=f"{layout}, batch {batch_size}")
                drawing.setdefault((layout, batch_size), []).append((time.perf_counter() - started) / args.images)
    print(f"drawing, seconds per picture ({SAMPLING_STEPS[MICRO]} steps, guidance 7.5, {args.images} pictures):")
    for (layout, batch_size), seconds in drawing.items():
        print(f"  {layout:14s} batch {batch_size:2d}: " + ", ".join(f"{s:.3f}" for s in seconds))

    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(MICRO_FOLDER, subfolder="unet")
    unet.requires_grad_(False)
    defaults = TRAINING_DEFAULTS[MICRO]
    add_lora({"unet": (unet, defaults["lora_targets"])}, rank=defaults["rank"], alpha=defaults["lora_alpha"], seed=0)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 32, 32, generator=generator)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    timesteps = torch.tensor([500, 800])
    training = {}
    for _ in range(2):
        for layout, memory_format in layouts.items():
            unet.to(memory_format=memory_format)
            sample = latents.to(memory_format=memory_format)
            for index in range(args.updates + 3):
                if index == 3:  # the first calls warm oneDNN's caches
                    started = time.perf_counter()
                unet(sample, timesteps, context).sample.square().mean().backward()
            training.setdefault(layout, []).append((time.perf_counter() - started) / args.updates)
    print("training, seconds per forward and backward (2 latents, micro's default LoRA):")
    for layout, seconds in training.items():
        print(f"  {layout:14s}: " + ", ".join(f"{s:.3f}" for s in seconds))


if __name__ == "__main__":
    main()
