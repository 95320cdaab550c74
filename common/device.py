"""Choosing where the model runs, and in which precision.

fp16 halves memory and doubles speed on a CUDA GPU; on a CPU it is slow and
some kernels are missing, so the CPU (and Apple's MPS, where fp16 attention
still produces black images on some versions) uses fp32.
"""

import torch

from common.errors import UserError


def pick_device(requested="auto"):
    """Return (torch.device, dtype) for 'auto', 'cuda', 'mps' or 'cpu'."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise UserError("--device cuda was asked for but this PyTorch sees no CUDA GPU; "
                        "use --device cpu (or auto), or install a CUDA build of torch")
    if requested == "mps" and not mps:
        raise UserError("--device mps was asked for but this machine has no Apple MPS; use --device cpu (or auto)")
    dtype = torch.float16 if requested == "cuda" else torch.float32
    return torch.device(requested), dtype
