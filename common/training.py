"""Setting up a training run: Accelerate, compiling, the optimizer, gradient checkpointing."""

import types

import torch

COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests swap in a quicker one


# What --compile compiles of each trained model (torch.compile, inductor): "model", the whole forward
# as one graph (most fusion, longest compile); "blocks", each block of a list of like blocks on its
# own, the rest left as it is (regional compilation: SD 1.5's UNet repeats a few kinds of ResNet
# and transformer blocks, so there is less to compile, for a little less fusion).
COMPILE_SCOPES = ["off", "model", "blocks"]
# --compile-mode, torch.compile's: "reduce-overhead" adds CUDA graphs, which record the update's
# kernels once and replay them without launching each (CUDA only; elsewhere it compiles as "default").
COMPILE_MODES = ["default", "reduce-overhead", "max-autotune-no-cudagraphs"]


def make_accelerator(device, mixed_precision, compile_scope="off", compile_mode="default"):
    """(Accelerator, its device, the frozen weights' dtype, the precision name).

    'auto' means fp16 on CUDA and full precision elsewhere. Under
    `accelerate launch` the launcher's settings decide the device.
    `compile_scope` (COMPILE_SCOPES) and `compile_mode` (COMPILE_MODES): how the trained models
    are compiled (give them to `prepare_trained_model`); the pipeline keeps the uncompiled models for
    sampling.
    """
    from accelerate import Accelerator
    from accelerate.utils import TorchDynamoPlugin

    if mixed_precision == "auto":
        mixed_precision = "fp16" if device.type == "cuda" else "no"
    # Accelerate keeps one precision per process and refuses a second Accelerator with another
    # (a notebook that trains twice, the tests, bench/gpu_check). Outside `accelerate launch`
    # nothing else shares that state, so an earlier run's is dropped; a launched run's is kept.
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if AcceleratorState._shared_state and PartialState().distributed_type == DistributedType.NO:
        AcceleratorState._reset_state()
    # "blocks" is compiled by `prepare_trained_model`, not by Accelerate (it says why), and never Accelerate's
    # regional compilation, whatever `accelerate config` says. Without --compile, `accelerate launch`'s
    # dynamo settings (if any) apply, as Accelerate's default.
    compiling = TorchDynamoPlugin(backend={"model": COMPILE_BACKEND, "blocks": "no"}.get(compile_scope),
                                  mode=compile_mode, use_regional_compilation=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu", dynamo_plugin=compiling)
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


def prepare_trained_model(accelerator, model, compile_scope="off", compile_mode="default"):
    """`accelerator.prepare(model)` for a model that trains, compiled as --compile asks ("model" by
    Accelerate, set up in make_accelerator; "blocks" here). `model` itself stays uncompiled."""
    if compile_scope == "blocks":
        model = compile_repeated_blocks(model, backend=COMPILE_BACKEND, mode=compile_mode)
    return accelerator.prepare(model)


def compile_repeated_blocks(model, **compile_options):
    """A copy of `model` that shares its weights, in which each block of a ModuleList of like blocks is
    compiled on its own (torch.compile); everything else runs as it is.

    Accelerate's regional compilation (`compile_regions`) does the same but also compiles every other
    leaf module in a wrapper, and diffusers' UNet breaks on that wrapper (`if self.conv_norm_out:` asks
    it for its length). diffusers' `compile_repeated_blocks` compiles in place, so the pipeline would
    sample with the compiled blocks too, compiling again for every new shape of the progress grids.
    """
    # Like blocks share their code, and torch.compile keeps one compiled version per shape of it:
    # SD 1.5's UNet calls its ResNet block with more shapes than the default limit of 8, beyond which
    # the rest would run uncompiled. Each shape is compiled as it is (dynamic=False): with shapes left
    # symbolic, inductor failed on this UNet's blocks (torch 2.13, "cannot determine truth value").
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # for this process
    compile_options = {"dynamic": False, **compile_options}
    lists = {id(child) for child in model.modules() if isinstance(child, torch.nn.ModuleList) and len(child) > 0
             and all(type(block) is type(child[0]) for block in child)}

    def copy_with_compiled_blocks(module):
        if id(module) in lists:
            return torch.nn.ModuleList(torch.compile(block, **compile_options) for block in module)
        if not any(id(inner) in lists for inner in module.modules()):
            return module  # nothing to compile below it: shared as it is
        copy = module.__class__.__new__(module.__class__)
        copy.__dict__.update(module.__dict__)  # the same parameters, buffers and settings
        for name, value in module.__dict__.items():  # methods bound to the module, bound to the copy instead
            if getattr(value, "__self__", None) is module:
                copy.__dict__[name] = types.MethodType(value.__func__, copy)
        # (hooks live in dicts the copy shares with the module: one added to either would run in both)
        copy._modules = {name: child if child is None else copy_with_compiled_blocks(child)
                         for name, child in module._modules.items()}
        return copy

    return copy_with_compiled_blocks(model)


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
    """AdamW's fused kernel on CUDA and on the CPU: it updates all weights in one launch (on CUDA, under
    fp16, it also lets the gradient scaler skip an overflowed step without waiting for the GPU). On a CPU
    torch's default is a Python loop of small operations per tensor, slow for a LoRA's many small
    tensors (bench/bench_adamw.py; docs/performance.md)."""
    return torch.optim.AdamW(parameter_groups, fused=device.type in ("cuda", "cpu"), **options)
