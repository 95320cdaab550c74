"""Choosing where the model runs, and in which precision.

fp16 halves memory and doubles speed on a CUDA GPU; on a CPU it is slow and
some kernels are missing, so the CPU (and Apple's MPS, where fp16 attention
still produces black images on some versions) uses fp32 unless asked.
`--precision bf16` also runs on a CPU: that is how the tests check the
half-precision path without a GPU.
"""

import torch

from common.errors import UserError


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_threads(requested="auto"):
    """How many threads torch computes with on the CPU: `requested`, OMP_NUM_THREADS where it is set,
    or for 'auto' one per physical core that other work leaves free (at least 1).

    With every core taken, torch's threads wait for each other at every operation while other
    processes hold the cores, and small models such as micro then run many times slower than on
    one thread (docs/performance.md, "Threads"). A tenth of a second's look at how busy the CPU is
    now (before this script computes anything) tells which case this is.
    """
    import math
    import os

    if requested != "auto":
        return int(requested)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # set by hand, or by `accelerate launch`
        return int(os.environ["OMP_NUM_THREADS"])
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    busy_cores = psutil.cpu_percent(interval=0.1) / 100 * (os.cpu_count() or 1)
    return max(1, cores - math.ceil(busy_cores - 0.5))  # the cores other work leaves free


def pick_device(requested="auto", precision="auto", threads="auto"):
    """Return (torch.device, dtype) for 'auto', 'cuda', 'mps' or 'cpu' and a --precision
    ('auto': fp16 on CUDA, fp32 elsewhere); on the CPU also set torch's thread count (--threads)."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise UserError("--device cuda was asked for but this PyTorch sees no CUDA GPU; "
                        "use --device cpu (or auto), or install a CUDA build of torch")
    if requested == "mps" and not mps:
        raise UserError("--device mps was asked for but this machine has no Apple MPS; use --device cpu (or auto)")
    if precision == "auto":
        precision = "fp16" if requested == "cuda" else "fp32"
    if requested == "cpu":
        torch.set_num_threads(cpu_threads(threads))
    if requested == "cuda":
        # TF32 for whatever still runs in fp32 (the LoRA's own matmuls, the loss): free speed on
        # Ampere and newer, and precise enough for training, as PyTorch's docs say.
        torch.set_float32_matmul_precision("high")
        # The shapes repeat (every update, every denoising step): let cuDNN time its convolution
        # algorithms once per shape and keep the fastest.
        torch.backends.cudnn.benchmark = True
    return torch.device(requested), PRECISIONS[precision]


def copy_to_device(tensor, device, dtype=None):
    """`tensor`, made on the CPU (random draws, token ids), copied to `device` without waiting for the GPU.

    PyTorch follows a blocking host-to-GPU copy with a wait until the GPU has finished all its queued
    work, so a training loop that copies its random draws that way makes the GPU idle while Python
    prepares each next update. A non-blocking copy from ordinary (pageable) CPU memory is staged by
    CUDA before the call returns, so the CPU tensor may go away at once. On a CPU it is a plain copy.
    """
    return tensor.to(device, dtype, non_blocking=True)
