"""Putting trainable LoRA matrices beside a frozen model's layers.

LoRA (Hu et al. 2021) leaves each adapted weight W frozen and adds a product of
two small matrices beside it: W x + (alpha / r) B A x, with A (r x in) random
and B (out x r) zero, so the adapted model starts out exactly equal to the
base. Only A and B train. PEFT does the work; this module picks the layers,
checks the names first, and keeps the trainable weights in fp32 under mixed
precision (the frozen ones may be fp16/bf16).
"""

import torch

from common.errors import UserError

# The text encoder's attention projections (CLIP's names), diffusers' --train_text_encoder targets.
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def check_lora_targets(model, targets, suggestion):
    """Refuse target names that match no module of `model` (PEFT's suffix rule), before any work starts."""
    names = [name for name, _ in model.named_modules()]
    unknown = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if unknown:
        raise UserError(f"--lora-targets {' '.join(unknown)} matches no module of this UNet; "
                        f"try the default (auto) or names such as {' '.join(suggestion)}")


def add_lora(models, *, rank, alpha, seed):
    """Add rank-`rank` LoRA matrices to each model: `models` is {role: (model, target module names)}.

    Returns ({role: LoraConfig}, {name: trainable parameter}); the UNet's parameter names
    stay bare and the others get their role as a prefix ("text_encoder.…"), as checkpoints name them.
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    configs, trainable = {}, {}
    torch.manual_seed(seed)  # the LoRA's random A matrices
    for role, (model, targets) in models.items():
        configs[role] = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
        model.add_adapter(configs[role])
        cast_training_params(model, dtype=torch.float32)
        # The new layers come in torch's default memory layout, while common/pipeline.py loads the UNet in
        # channels-last memory on a CPU (it draws faster): the adapted model trains in one layout, the
        # default one, whose speed bench/bench_cpu_layout.py measures beside channels-last.
        model.to(memory_format=torch.contiguous_format)
        prefix = "" if role == "unet" else role + "."
        trainable.update({prefix + name: p for name, p in model.named_parameters() if p.requires_grad})
    return configs, trainable


def compute_lora_in_autocast_precision(models):
    """Let autocast, not PEFT, choose the precision of each LoRA layer's input. Only for models that
    run under autocast from here on (training, and sampling mid-training, under mixed precision).

    PEFT casts a LoRA layer's input to its weights' dtype (fp32 here, the trainable weights'), for
    models that run without autocast. Under autocast that cast is wasted: the fp16/bf16 activation is
    copied to fp32, then autocast copies it back to half precision for the matmul, and the backward
    pass copies its gradient twice again. The round trip half -> fp32 -> half is exact, so skipping it
    changes no number (for contiguous inputs, as diffusers' attention gives; on a strided one the
    matmul might pick another kernel), and it leaves out up to four activation-sized copies per layer
    and update (docs/performance.md counts the kernels an update launches with and without them).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in models:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False  # what peft.helpers.disable_input_dtype_casting sets
