"""common/training.py: when gradient checkpointing is worth its cost."""

import types

import torch

from common.training import gradient_checkpointing_needed


def test_gradient_checkpointing_is_on_only_when_asked_or_the_gpu_is_too_small(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert gradient_checkpointing_needed("auto", cpu, 2, 512) is False
    assert gradient_checkpointing_needed(True, cpu, 2, 512) is True
    assert gradient_checkpointing_needed(False, cuda, 2, 512) is False  # asked: never queried

    def card(gib):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device: types.SimpleNamespace(total_memory=gib * 1024 ** 3))

    card(8)  # an 8 GB RTX card: SD 1.5 at 512 px, 1 instance + 1 class image, fits without
    assert gradient_checkpointing_needed("auto", cuda, 2, 512) is False
    card(6)
    assert gradient_checkpointing_needed("auto", cuda, 2, 512) is True
    card(8)  # more images per update, or larger ones, need more
    assert gradient_checkpointing_needed("auto", cuda, 8, 512) is True
    assert gradient_checkpointing_needed("auto", cuda, 2, 768) is True
    # --mixed-precision no: fp32 weights and activations, twice the memory
    assert gradient_checkpointing_needed("auto", cuda, 2, 512, torch.float32) is True
    assert gradient_checkpointing_needed("auto", cuda, 2, 512, torch.bfloat16) is False


def test_compiling_repeated_blocks_leaves_the_model_itself_alone():
    """--compile blocks trains a copy whose like blocks are compiled one by one; it shares every weight with the
    pipeline's model, which stays uncompiled for sampling, and computes the same as it."""
    from common.training import compile_repeated_blocks
    from tests.helpers import tiny_unet

    unet = tiny_unet()
    compiled = compile_repeated_blocks(unet, backend="eager")
    wrapped = [name for name, module in compiled.named_modules() if isinstance(module, torch._dynamo.OptimizedModule)]
    assert wrapped and all(".resnets." in name or ".attentions." in name or "samplers." in name for name in wrapped)
    assert not any(isinstance(module, torch._dynamo.OptimizedModule) for module in unet.modules())
    assert {id(p) for p in compiled.parameters()} == {id(p) for p in unet.parameters()}
    generator = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        assert torch.equal(compiled(sample, 500, context).sample, unet(sample, 500, context).sample)
