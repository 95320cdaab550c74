"""Setting up a training run: Accelerate, the optimizer, gradient checkpointing."""

import torch

COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests swap in a quicker one


def make_accelerator(device, mixed_precision, compile_models=False):
    """(Accelerator, its device, the frozen weights' dtype, the precision name).

    'auto' means fp16 on CUDA and full precision elsewhere. Under
    `accelerate launch` the launcher's settings decide the device.
    `compile_models`: the models given to `accelerator.prepare` are compiled with
    torch.compile (inductor); the pipeline keeps the uncompiled model for sampling.
    """
    from accelerate import Accelerator

    if mixed_precision == "auto":
        mixed_precision = "fp16" if device.type == "cuda" else "no"
    # Accelerate keeps one precision per process and refuses a second Accelerator with another
    # (a notebook that trains twice, the tests, bench/gpu_check). Outside `accelerate launch`
    # nothing else shares that state, so an earlier run's is dropped; a launched run's is kept.
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if AcceleratorState._shared_state and PartialState().distributed_type == DistributedType.NO:
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu",
                              dynamo_backend=COMPILE_BACKEND if compile_models else None)
    if accelerator.device.type == "cpu" and mixed_precision == "fp16" and not accelerator.native_amp:
        # Accelerate turns fp16 mixed precision on only for GPUs and other accelerators: on a CPU it
        # quietly leaves out the autocast and the gradient scaler, and the fp16 models then run
        # without either. torch has both for the CPU, so they are turned on here as on CUDA: with
        # them `--mixed-precision fp16` on a CPU runs the course's CUDA path (fp16 autocast, loss
        # scaling, skipped steps on overflow), which is how the tests check it without a GPU.
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    return accelerator, accelerator.device, weight_dtype, mixed_precision


# Gradient checkpointing recomputes activations in the backward pass instead of
# keeping them: it saves memory and costs time (docs/performance.md has both).
# Auto turns it on only where the peak without it would not fit; this model of
# that peak (SD 1.5's frozen weights, plus activations per training image) is
# fitted to the peak measured there in fp16, and doubled for fp32 weights and
# activations (--mixed-precision no).
PEAK_WITHOUT_CHECKPOINTING_GIB = {"weights": 2.2, "per_image_at_512px": 1.25}


def gradient_checkpointing_needed(setting, device, images_per_update, resolution, weight_dtype=torch.float16):
    """--gradient-checkpointing: True/False as given; auto: on only for a CUDA GPU too small to train without."""
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return False
    bytes_per_number = torch.finfo(weight_dtype).bits / 16  # relative to fp16
    need = bytes_per_number * (PEAK_WITHOUT_CHECKPOINTING_GIB["weights"]
                               + PEAK_WITHOUT_CHECKPOINTING_GIB["per_image_at_512px"] * images_per_update
                               * (resolution / 512) ** 2)
    total = torch.cuda.get_device_properties(device).total_memory / 1024 ** 3
    return total < need + 1.5  # headroom: the CUDA context, the allocator's cache, the progress grids


def average_gradients_across_processes(accelerator, parameters):
    """Under `accelerate launch`: average the gradients of trainable tensors that sit outside every
    model Accelerate wrapped (DDP averages only the wrapped models'); one process has nothing to do."""
    if accelerator.num_processes > 1:
        for parameter in parameters:
            parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")


def adamw(parameter_groups, device, **options):
    """AdamW; on CUDA its fused kernel, which updates all weights in one launch and, under fp16,
    lets the gradient scaler skip an overflowed step without waiting for the GPU."""
    return torch.optim.AdamW(parameter_groups, fused=device.type == "cuda", **options)
