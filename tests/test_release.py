"""The published release files load fully into SD 1.5's architecture, at their trained scale.

The UNet has SD 1.5's exact layout with random weights: loading is about
names and shapes, and a random base still shows whether the adapter acts.
"""

import pytest
import torch
from safetensors.torch import load_file

from common.adapters import load_lora, load_textual_inversion

SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, sample_size=64)


class UNetOnly:
    """Just the part of a pipeline that a UNet LoRA loader touches."""

    def __init__(self, unet):
        self.unet = unet
        self.text_encoder = None


@pytest.fixture(scope="module")
def sd15_unet():
    from diffusers import UNet2DConditionModel

    # Built on the meta device and then filled with small random numbers:
    # seconds instead of the ~20 s that 860M parameters of default init take.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    unet = unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0, 0.02, generator=generator)
    return unet.eval()


def test_release_lora_loads_128_layers_at_scale_8(sd15_unet, release_dir):
    unet = sd15_unet
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 768, generator=generator)
    with torch.no_grad():
        before = unet(sample, 500, context).sample
    adapter = load_lora(UNetOnly(unet), release_dir / "fabric_lora")
    assert (adapter.layers, adapter.scale) == (128, 8.0)

    file_tensors = load_file(str(release_dir / "fabric_lora" / "adapter_model.safetensors"))
    loaded = unet.state_dict()
    for key, tensor in file_tensors.items():
        name = key.removeprefix("base_model.model.").replace(".weight", ".fabric.weight")
        assert torch.equal(loaded[name], tensor), key
    with torch.no_grad():
        after = unet(sample, 500, context).sample
    # Far above float noise (~1e-7 relative): the adapter changes what the UNet predicts.
    assert (after - before).abs().max() / before.abs().max() > 1e-2
    unet.delete_adapters("fabric")


def test_release_textual_inversion_adds_its_token(tmp_path, release_dir):
    from tests.helpers import build_tiny_pipeline

    pipe = build_tiny_pipeline(tmp_path / "tiny768", text_width=768)  # SD 1.5's text width, few layers
    vocab_size = len(pipe.tokenizer)
    file = release_dir / "fabric_textual_inversion" / "learned_embeds.safetensors"
    adapter = load_textual_inversion(pipe, file)
    assert adapter.token == "<african-fabric>"
    token_id = pipe.tokenizer.convert_tokens_to_ids("<african-fabric>")
    assert token_id == vocab_size
    vector = load_file(str(file))["<african-fabric>"]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], vector)


def test_release_lora_exported_for_the_web_uis_loads_128_layers_at_scale_8(sd15_unet, release_dir, tmp_path):
    """The course's release through export_adapter's conversion, read back by plain diffusers' loader
    of kohya's layout: the same 128 layers at scale 8.0, the same prediction as this repo's loader."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    from common.adapters import injected_lora_layers, read_lora
    from common.web_ui_files import save_kohya_lora

    class Parts(StableDiffusionLoraLoaderMixin, UNetOnly):
        """What diffusers' load_lora_weights touches of a pipeline: the UNet (the release has no text encoder)."""

        hf_device_map = None  # not spread over devices

        @property
        def components(self):
            return {"unet": self.unet}

    unet = sd15_unet
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 768, generator=generator)
    kohya_file = tmp_path / "fabric_lora_kohya.safetensors"
    assert save_kohya_lora(read_lora(release_dir / "fabric_lora"), kohya_file) == {"unet": 128}
    with torch.no_grad():
        before = unet(sample, 500, context).sample
        load_lora(UNetOnly(unet), release_dir / "fabric_lora", adapter_name="ours")
        ours = unet(sample, 500, context).sample
        unet.delete_adapters("ours")
        parts = Parts(unet)
        parts.load_lora_weights(str(kohya_file), adapter_name="web_ui")
        layers = injected_lora_layers(parts, "web_ui")
        assert len(layers) == 128 and {float(layer.scaling["web_ui"]) for layer in layers} == {8.0}
        theirs = unet(sample, 500, context).sample
    unet.delete_adapters("web_ui")
    scale = ours.abs().max()
    assert (ours - theirs).abs().max() <= 1e-5 * scale
    assert (ours - before).abs().max() >= 1e-2 * before.abs().max()
