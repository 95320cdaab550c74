"""Benchmark: how many operations one LoRA training update launches, counted on the CPU.

On a GPU, a small-batch training update of SD 1.5 is not limited by arithmetic
but by launching kernels: Python and PyTorch prepare each one on the CPU, and
the GPU waits for the next (docs/performance.md). Each aten operation that is
not a view is about one kernel launch, and the operations an update runs are
the same on any device, so they can be counted here without a GPU.

This counts them for one exercise3b update (1 instance + 1 class latent,
forward, backward, gradient clipping, AdamW), in variants side by side:

    the UNet alone, no LoRA (backward to its input only: the base's share)
    LoRA rank 4 with PEFT's input casts       (exercise3b before)
    LoRA rank 4, autocast casting the inputs  (exercise3b now, under mixed precision)

    python bench/bench_update_ops.py                  # SD 1.5's UNet layout, random weights (about a minute)
    python bench/bench_update_ops.py --tiny           # the tests' tiny UNet (seconds)

The counts do not depend on the resolution (only the shapes do), so the
latents are 8 x 8. Half precision is bf16 here (fp16 runs the same operations
on CUDA).
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "slice", "select", "unsqueeze", "squeeze",
         "detach", "alias", "split", "split_with_sizes", "chunk", "reshape", "_reshape_alias", "as_strided", "unbind"}


def build_unet(tiny):
    import torch

    from tests.helpers import sd15_unet, tiny_unet

    torch.manual_seed(0)
    return tiny_unet() if tiny else sd15_unet()


def count_update(unet, trainable, inputs, dtype):
    """{operation: count} for one update: forward under autocast, backward, clipping, AdamW."""
    import torch

    from tests.helpers import CountingOps

    sample, timesteps, context = inputs
    if not trainable:  # no LoRA: the backward pass goes to the input only
        sample = sample.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True) if trainable else None

    def update():
        with torch.autocast("cpu", dtype):
            prediction = unet(sample, timesteps, context).sample
        torch.nn.functional.mse_loss(prediction.float(), torch.zeros_like(prediction, dtype=torch.float32)).backward()
        if optimizer:
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    update()  # AdamW creates its state on the first step
    with CountingOps() as counter:
        update()
    return counter.counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny UNet instead of SD 1.5's layout")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank")
    args = parser.parse_args()

    import torch

    from common.lora_training import add_lora, compute_lora_in_autocast_precision
    from exercise3b_train_lora import LORA_TARGETS

    dtype = torch.bfloat16
    rows = []
    variants = {"the UNet alone, no LoRA": (False, False), "LoRA, PEFT's input casts (before)": (True, False),
                "LoRA, autocast's casts only (exercise3b)": (True, True)}
    for name, (lora, autocast_casts) in variants.items():
        unet = build_unet(args.tiny).to(dtype).requires_grad_(False)
        trainable = []
        if lora:
            _, named = add_lora({"unet": (unet, LORA_TARGETS)}, rank=args.rank, alpha=32, seed=0)
            trainable = list(named.values())
        if autocast_casts:
            compute_lora_in_autocast_precision([unet])
        generator = torch.Generator().manual_seed(0)
        inputs = (torch.randn(2, 4, 8, 8, generator=generator).to(dtype), torch.tensor([10, 700]),
                  torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator).to(dtype))
        counts = count_update(unet, trainable, inputs, dtype)
        layers = sum(1 for module_name, _ in unet.named_modules() if module_name.endswith(".lora_A"))
        launches = sum(count for op, count in counts.items() if op not in VIEWS)
        rows.append((name, layers, sum(counts.values()), launches, counts["_to_copy"]))
        print(f"{name}: {launches} launches", flush=True)

    print(f"\n{'tiny UNet' if args.tiny else 'SD 1.5 UNet layout'}, bf16 autocast, 2 latents, rank {args.rank}, "
          f"torch {torch.__version__}\n")
    print("| variant | LoRA layers | aten operations | not views (about one kernel each) | dtype casts |")
    print("|---|---|---|---|---|")
    for name, layers, operations, launches, casts in rows:
        print(f"| {name} | {layers} | {operations} | {launches} | {casts} |")


if __name__ == "__main__":
    main()
