"""Adapters as the web UIs read them: one .safetensors file each, for AUTOMATIC1111, ComfyUI, SD.Next.

The LoRA. The web UIs read kohya's layout: keys `lora_unet_<module>.lora_down.weight`,
`.lora_up.weight` and `.alpha` (and `lora_te1_…` for the text encoder), where the
module's dots are underscores and its scale is alpha / rank. The keys are made by
diffusers' own `convert_state_dict_to_kohya`. That converter writes every module's
alpha as its rank, which is a scale of 1 whatever the LoRA trained with: the course's
release (r 4, lora_alpha 32) would run at 1/8 of its strength, the very mistake
common/adapters.py exists to prevent. So each alpha is written again here, from the
adapter's own config (lora_alpha, alpha_pattern, rsLoRA): alpha = trained scale x rank.

What the format cannot hold is refused, not dropped: DoRA magnitudes, biases, whole
modules, and any layer that is not in the UNet's blocks or the text encoder's layers.
The identifier's trained token embeddings (micro's pivotal tuning) have no place in it
either; they stay in identifier_embeddings.safetensors, which this repo's loader reads.

The word. AUTOMATIC1111 reads an embedding file holding one tensor of [vectors, width],
and names the word after the file; kohya's scripts call the tensor "emb_params". diffusers'
`load_textual_inversion` reads it too, given the token.
"""

import json
import math
import re
from pathlib import Path

import torch

from common.errors import UserError
from common.saving import save_safetensors

KOHYA_SUFFIX = "_kohya.safetensors"
EMBEDDING_KEY = "emb_params"
LORA_MATRICES = (".lora_A.weight", ".lora_B.weight")
# Where A1111's and ComfyUI's LoRA readers can put a diffusers-named layer of SD 1.x.
UNET_PLACES = re.compile(r"((down|up)_blocks\.\d+|mid_block)\.(attentions|resnets)\.\d+\.[\w.]+"
                         r"|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv")
TEXT_ENCODER_PLACES = re.compile(r"text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")
PLACES = {"unet": UNET_PLACES, "text_encoder": TEXT_ENCODER_PLACES}


def kohya_file_name(adapter_dir):
    return Path(adapter_dir).name + KOHYA_SUFFIX


def embedding_file_name(token):
    """'<african-fabric>' -> 'african-fabric.safetensors'; A1111's prompt word is the file's name."""
    word = re.sub(r"[^\w.-]+", "-", token).strip("-.")
    if not word:
        raise UserError(f"the token {token!r} makes no file name; give the word letters or digits")
    return f"{word}.safetensors"


def text_encoder_module(path):
    """CLIPTextModel's own module path: PEFT files of its inner text_model start at 'encoder.'."""
    return "text_model." + path if path.startswith("encoder.") else path


def trained_scale(config, module, rank):
    """The scale PEFT computes for `module`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def lora_parts(lora):
    """{role: (state dict keyed by module path, PEFT-style config)} of a LoraFile (common/adapters.py)."""
    if lora.kind == "peft":
        parts = {"unet": (lora.state_dict, lora.config_kwargs)}
        if lora.text_encoder is not None:
            parts["text_encoder"] = (lora.text_encoder.state_dict, lora.text_encoder.config_kwargs)
        return parts
    from safetensors import safe_open

    with safe_open(str(lora.location), "pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    parts = {}
    for key, tensor in lora.state_dict.items():
        role, _, rest = key.partition(".")
        if role not in PLACES:
            raise UserError(f"{lora.source}: the layer {key} belongs to neither the UNet nor the text encoder, so "
                            "the web UIs' LoRA layout has no place for it")
        parts.setdefault(role, ({}, None))[0][rest] = tensor
    # diffusers' loader takes alpha from this metadata, and without it assumes alpha = r (scale 1)
    return {role: (state, {"lora_alpha": metadata.get(f"{role}.lora_alpha"), "r": metadata.get(f"{role}.r"),
                           "alpha_pattern": metadata.get(f"{role}.alpha_pattern"),
                           "use_rslora": metadata.get(f"{role}.use_rslora")})
            for role, (state, _) in parts.items()}


def kohya_state_dict(lora):
    """The LoRA in kohya's layout at its trained scale; (state dict, {role: layers}).

    Every layer must come back to its own place through diffusers' reader of this
    layout, so that a file the web UIs would half-apply is never written.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    if lora.kind == "peft" and (lora.config_kwargs.get("use_dora") or lora.config_kwargs.get("lora_bias")):
        raise UserError(f"{lora.source} is a {'DoRA' if lora.config_kwargs.get('use_dora') else 'LoRA-with-bias'} "
                        "adapter; the web UIs' LoRA layout holds plain LoRA matrices only")
    kohya, layers, expected = {}, {}, {}
    for role, (state, config) in lora_parts(lora).items():
        modules = {}
        for key, tensor in state.items():
            suffix = next((s for s in LORA_MATRICES if key.endswith(s)), None)
            module = key[:-len(suffix)] if suffix else key
            module = text_encoder_module(module) if role == "text_encoder" else module
            if suffix is None or not PLACES[role].fullmatch(module):
                raise UserError(f"{lora.source}: the layer {key} cannot be placed in the web UIs' LoRA layout "
                                f"(only LoRA A and B matrices of the {role.replace('_', ' ')}'s "
                                f"{'blocks' if role == 'unet' else 'layers'} can); nothing was written")
            modules.setdefault(module, {})[suffix] = tensor
        for module, pair in modules.items():
            if len(pair) != 2:
                raise UserError(f"{lora.source}: the layer {module} has only one of its two LoRA matrices; "
                                "the file is incomplete, download or train it again")
            rank = pair[".lora_A.weight"].shape[0]
            scale = trained_scale(config, module, rank) if config.get("lora_alpha") is not None else 1.0
            converted = convert_state_dict_to_kohya(
                {f"{role}.{module}{suffix}": tensor.detach().float().contiguous() for suffix, tensor in pair.items()})
            (alpha_key,) = [key for key in converted if key.endswith(".alpha")]
            converted[alpha_key] = torch.tensor(scale * rank, dtype=torch.float32)
            kohya.update(converted)
            expected[f"{role}.{module}"] = scale
        layers[role] = len(modules)
    check_round_trip(kohya, expected, lora.source)
    return kohya, layers


def check_round_trip(kohya, expected, source):
    """diffusers' reader of this layout finds every layer, or nothing is written (the tests load the
    file into real models and compare their outputs)."""
    from diffusers import StableDiffusionPipeline

    try:
        state, _ = StableDiffusionPipeline.lora_state_dict(dict(kohya))
    except (KeyError, ValueError) as error:
        raise UserError(f"{source}: diffusers cannot read the converted file back ({str(error)[:120]}); "
                        "nothing was written") from None
    found = sum(1 for key in state if key.endswith(("down.weight", "lora_A.weight")))
    if found != len(expected):
        raise UserError(f"{source}: diffusers reads back {found} of its {len(expected)} layers from the web UIs' "
                        "layout, so some cannot be placed; nothing was written")


def refuse_existing(path, overwrite, elsewhere="--output"):
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it, or {elsewhere} to write elsewhere")


def save_kohya_lora(lora, path, overwrite=False):
    """Write the LoRA in kohya's layout to `path` (atomically); returns {role: layers}."""
    refuse_existing(path, overwrite)
    state, layers = kohya_state_dict(lora)
    ranks = sorted({int(t.shape[0]) for k, t in state.items() if k.endswith("lora_down.weight")})
    alphas = sorted({float(t) for k, t in state.items() if k.endswith(".alpha")})
    # kohya's own metadata fields, which the web UIs show beside the file
    metadata = {"ss_network_module": "networks.lora", "ss_output_name": Path(path).stem,
                "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "mixed",
                "ss_network_alpha": str(alphas[0]) if len(alphas) == 1 else "mixed",
                "ss_training_comment": "exported from a diffusers/PEFT LoRA by this course's export_adapter.py; "
                                       "trained identifier embeddings, where there were any, are not in this file"}
    save_safetensors(state, path, metadata=metadata)
    return layers


def save_web_ui_embedding(token, vector, path, overwrite=False):
    """Write a textual-inversion vector as AUTOMATIC1111 reads it (name the file embedding_file_name(token))."""
    refuse_existing(path, overwrite)
    vectors = vector.detach().float().reshape(-1, vector.shape[-1]).contiguous()
    return save_safetensors({EMBEDDING_KEY: vectors}, path, metadata={"token": token})
