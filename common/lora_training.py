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
        prefix = "" if role == "unet" else role + "."
        trainable.update({prefix + name: p for name, p in model.named_parameters() if p.requires_grad})
    return configs, trainable
