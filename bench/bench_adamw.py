"""Benchmark: one AdamW step over the micro LoRA's trained tensors, torch's three implementations side by side.

exercise3b on micro trains rank-16 LoRA matrices on the UNet's attention projections and ResNet
convolutions: many small tensors. On a CPU, torch's default AdamW runs a Python loop of small
operations per tensor; `foreach` batches them by operation; `fused` does the whole update in one
kernel. This times each on the real tensors (shapes of micro's defaults, gradients made up: the
arithmetic is the same whatever they hold), in one run, one after another.

    python bench/bench_adamw.py               # micro's default LoRA
    python bench/bench_adamw.py --threads 1
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main():
    import torch

    from common.base_model import MICRO_FOLDER, TRAINING_DEFAULTS, MICRO
    from common.lora_training import add_lora

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed optimizer steps per implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(MICRO_FOLDER, subfolder="unet")
    unet.requires_grad_(False)
    defaults = TRAINING_DEFAULTS[MICRO]
    _, trainable = add_lora({"unet": (unet, defaults["lora_targets"])}, rank=defaults["rank"],
                            alpha=defaults["lora_alpha"], seed=0)
    parameters = list(trainable.values())
    generator = torch.Generator().manual_seed(0)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator)
    print(f"{len(parameters)} tensors, {sum(p.numel() for p in parameters):,} numbers, "
          f"{torch.get_num_threads()} threads")
    for name, options in (("loop (CPU default)", {"foreach": False}), ("foreach", {"foreach": True}),
                          ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=1e-2, **options)
        for _ in range(10):
            optimizer.step()
        started = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        print(f"{name:20s} {(time.perf_counter() - started) / args.steps * 1000:7.2f} ms per step")


if __name__ == "__main__":
    main()
