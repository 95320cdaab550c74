"""Benchmark: what caching the frozen VAE and text encoder saves per DreamBooth LoRA update.

Runs the same LoRA training step (1 instance + 1 class image, prior
preservation on) with and without the encoder cache, each in its own process
so that peak memory is measured separately, and prints seconds per optimizer
update, peak memory and the ratio, all from this one run.

    python bench/bench_lora_caching.py                          # tiny model, CPU (seconds)
    python bench/bench_lora_caching.py --base-model path/to/sd  # any local diffusers folder
    python bench/bench_lora_caching.py --sd15-layout --resolution 512 --device cuda   # GPU check
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def measure(args):
    """One mode in this process: warm up, then time `args.updates` optimizer updates."""
    import torch
    from diffusers import DDPMScheduler
    from PIL import Image

    import exercise3b_train_lora as trainer
    from common.device import pick_device
    from common.encoded_examples import EncodedExamples
    from common.lora_training import add_lora, compute_lora_in_autocast_precision
    from common.pipeline import load_pipeline
    from common.training import adamw

    device, dtype = pick_device(args.device)
    pipe = load_pipeline(args.base_model, device, dtype)
    if args.sd15_layout:  # SD 1.5's exact UNet, random weights (weights do not change the speed)
        from tests.helpers import sd15_unet

        pipe.unet = sd15_unet(cross_attention_dim=pipe.text_encoder.config.hidden_size).to(device, dtype)
    images = [Image.new("RGB", (args.resolution, args.resolution), (i * 20, 100, 200 - i * 20)) for i in range(10)]
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    examples = EncodedExamples(pipe, images_by_role={"instance": images, "class": images},
                               captions_by_role={"instance": trainer.INSTANCE_PROMPT, "class": trainer.CLASS_PROMPT},
                               flip=True, cache=args.mode == "cached", text_encoder_trains=False, device=device,
                               dtype=dtype)
    _, trainable = add_lora({"unet": (pipe.unet, trainer.LORA_TARGETS)}, rank=4, alpha=32, seed=0)
    if dtype != torch.float32:  # as exercise3b under mixed precision: the update runs under autocast
        compute_lora_in_autocast_precision([pipe.unet])
    optimizer = adamw(list(trainable.values()), device, lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)

    def update():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            total, _, _ = trainer.training_step(pipe.unet, scheduler, examples, 1, generator, True, 1.0)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        update()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.updates):
        update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.updates
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"mode": args.mode, "seconds_per_update": seconds, "peak_bytes": peak,
                      "memory": "GPU allocated" if device.type == "cuda" else "process RSS"}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base-model", default=None, help="local diffusers folder (default: a tiny random model)")
    parser.add_argument("--sd15-layout", action="store_true", help="swap in SD 1.5's UNet layout, random weights")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--updates", type=int, default=30, help="timed optimizer updates per mode")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mode", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return measure(args)

    with tempfile.TemporaryDirectory() as scratch:
        if args.base_model is None:
            from tests.helpers import build_tiny_pipeline

            args.base_model = str(Path(scratch) / "tiny")
            build_tiny_pipeline(args.base_model)
        results = {}
        for mode in ("cached", "uncached"):
            command = [sys.executable, __file__, "--mode", mode, "--base-model", args.base_model,
                       "--resolution", str(args.resolution), "--device", args.device,
                       "--updates", str(args.updates), "--warmup", str(args.warmup)]
            command += ["--sd15-layout"] if args.sd15_layout else []
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
    cached, uncached = results["cached"], results["uncached"]
    print(f"model {args.base_model if args.base_model and 'tiny' not in args.base_model else 'tiny random SD'}"
          f"{' + SD 1.5 UNet layout' if args.sd15_layout else ''}, {args.resolution} px, {args.updates} updates")
    for mode, result in results.items():
        print(f"  {mode:9s} {result['seconds_per_update'] * 1000:8.1f} ms/update  "
              f"{1 / result['seconds_per_update']:7.2f} updates/s  peak {result['peak_bytes'] / 2**20:8.0f} MiB "
              f"({result['memory']})")
    print(f"  caching is {uncached['seconds_per_update'] / cached['seconds_per_update']:.2f}x faster per update")


if __name__ == "__main__":
    main()
