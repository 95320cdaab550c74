"""LoRA layers for training under mixed precision: autocast, not PEFT, casts their inputs."""

import pytest
import torch

from common.lora_training import add_lora, compute_lora_in_autocast_precision
from tests.helpers import CountingOps, tiny_unet

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def half_unet_with_lora():
    """The tiny UNet as the trainers hold it under mixed precision: frozen weights in bf16, LoRA in fp32."""
    unet = tiny_unet().to(torch.bfloat16).requires_grad_(False)
    _, trainable = add_lora({"unet": (unet, TARGETS)}, rank=4, alpha=32, seed=0)
    for parameter in trainable.values():
        torch.nn.init.normal_(parameter, std=0.1)  # B starts at zero: give every path a gradient
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator).to(torch.bfloat16)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator).to(torch.bfloat16)
    return unet, trainable, (sample, torch.tensor([10, 700]), context)


def autocast_update(unet, trainable, inputs):
    """One forward and backward under bf16 autocast, as Accelerate runs a training update; the
    prediction and every trainable weight's gradient."""
    for parameter in trainable.values():
        parameter.grad = None
    with torch.autocast("cpu", torch.bfloat16):
        prediction = unet(*inputs).sample
    prediction.float().pow(2).mean().backward()
    return prediction, {name: parameter.grad for name, parameter in trainable.items()}


def test_skipping_peft_input_casts_changes_no_number():
    """half -> fp32 -> half is exact, so the prediction and every gradient are the same bits."""
    unet, trainable, inputs = half_unet_with_lora()
    cast_prediction, cast_gradients = autocast_update(unet, trainable, inputs)
    compute_lora_in_autocast_precision([unet])
    prediction, gradients = autocast_update(unet, trainable, inputs)
    assert torch.equal(prediction, cast_prediction)
    assert all(gradient.abs().sum() > 0 for gradient in gradients.values())
    for name, gradient in gradients.items():
        assert torch.equal(gradient, cast_gradients[name]), name


def test_skipping_peft_input_casts_leaves_out_two_copies_per_layer():
    """In the forward pass, each LoRA layer's input went half -> fp32 (PEFT) -> half (autocast)."""
    unet, _, inputs = half_unet_with_lora()
    layers = sum(1 for name, _ in unet.named_modules() if name.endswith(".lora_A"))
    copies = []
    for skip in (False, True):
        if skip:
            compute_lora_in_autocast_precision([unet])
        counter = CountingOps()
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), counter:
            unet(*inputs)
        copies.append(counter.counts["_to_copy"])
    assert layers > 0 and copies[0] - copies[1] == 2 * layers


def test_without_autocast_peft_must_cast():
    """Why it is only for models under autocast: fp32 LoRA weights cannot take a bf16 input alone."""
    unet, _, inputs = half_unet_with_lora()
    compute_lora_in_autocast_precision([unet])
    with torch.no_grad(), pytest.raises(RuntimeError):
        unet(*inputs)
