"""Benchmark: what compiling the LoRA-wrapped UNet costs, whole (--compile model) or by blocks (--compile blocks).

exercise3b's `--compile` makes its first update wait while torch.compile
traces the UNet and generates kernels. This times that first update and the
ones after it, for each scope, each in a fresh process with an empty compile
cache (inductor keeps generated kernels on disk, which would hide the cost on
a second run). The UNet is SD 1.5's layout with random weights and the
trainer's rank-4 LoRA, bf16 autocast, 2 latents of 8 x 8 (the graphs, and so
the compiling, are the same at any size; the kernels' speed is not).

    python bench/bench_compile.py --backend aot_eager   # tracing only: dynamo and autograd (a minute)
    python bench/bench_compile.py                        # inductor: tracing and code generation (minutes)
    python bench/bench_compile.py --tiny                 # the tests' tiny UNet

On a CPU inductor generates C++; on a GPU, Triton kernels. Only a GPU run
(`bench/gpu_check.py --compile ...`) says what compiling saves per update.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def measure(scope, backend, tiny, updates):
    """One scope in this process: the seconds of each update, and how many graphs were compiled."""
    import torch
    from torch._dynamo.utils import counters

    from bench.bench_update_ops import build_unet
    from common.lora_training import add_lora, compute_lora_in_autocast_precision
    from common.training import compile_repeated_blocks
    from exercise3b_train_lora import LORA_TARGETS

    dtype = torch.bfloat16
    unet = build_unet(tiny).to(dtype).requires_grad_(False)
    add_lora({"unet": (unet, LORA_TARGETS)}, rank=4, alpha=32, seed=0)
    compute_lora_in_autocast_precision([unet])  # as exercise3b under mixed precision
    if scope == "model":
        model = torch.compile(unet, backend=backend)
    elif scope == "blocks":
        model = compile_repeated_blocks(unet, backend=backend)
    else:
        model = unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator).to(dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator).to(dtype)
    seconds = []
    for _ in range(updates):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype):
            prediction = model(sample, torch.tensor([10, 700]), context).sample
        prediction.float().pow(2).mean().backward()
        seconds.append(time.perf_counter() - started)
    return {"scope": scope, "backend": backend, "first_update_s": round(seconds[0], 2),
            "later_update_s": round(sum(seconds[1:]) / max(1, len(seconds) - 1), 3),
            "graphs": counters["stats"]["unique_graphs"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scope", nargs="+", default=["off", "model", "blocks"], choices=["off", "model", "blocks"])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend: inductor, or aot_eager")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny UNet instead of SD 1.5's layout")
    parser.add_argument("--updates", type=int, default=3, help="forward and backward passes per scope")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this scope in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.backend, args.tiny, args.updates)))
        return

    import torch

    rows = []
    for scope in args.scope:
        with tempfile.TemporaryDirectory() as cache:
            command = [sys.executable, __file__, "--one", scope, "--backend", args.backend,
                       "--updates", str(args.updates)] + (["--tiny"] if args.tiny else [])
            result = subprocess.run(command, capture_output=True, text=True,
                                    env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
        if result.returncode:
            sys.exit(f"{scope} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"\n{'tiny UNet' if args.tiny else 'SD 1.5 UNet layout'} with rank-4 LoRA, bf16 autocast, 2 latents of 8 x 8, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print("| --compile | backend | graphs | first update s | later updates s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['scope']} | {row['backend'] if row['scope'] != 'off' else '-'} | {row['graphs']} "
              f"| {row['first_update_s']} | {row['later_update_s']} |")


if __name__ == "__main__":
    main()
