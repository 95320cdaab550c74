"""Loading personalisation adapters into a pipeline, and proving they loaded.

Four kinds of file come out of DreamBooth-style training:

1. a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors, keys
   `base_model.model.<module>.lora_A.weight`), which is what the course's
   release and `peft.PeftModel.save_pretrained` write; a text-encoder LoRA,
   where one was trained, sits in the same format in its text_encoder/ subfolder;
2. diffusers' own `pytorch_lora_weights.safetensors` (keys `unet.<module>...`),
   written by diffusers' training scripts and by exercise3b;
3. a textual-inversion embedding, `learned_embeds.safetensors` ({token: vector});
4. beside a LoRA, where exercise3b trained them, the identifier's own token
   embeddings, `identifier_embeddings.safetensors` (common/identifier_embeddings.py).

Why not just `pipe.load_lora_weights(folder)`? For kind 1 it loads nothing: it
looks for keys starting with `unet.`, finds none, logs one line and returns,
and the original course then printed "LoRA weights loaded successfully!". If
the keys are renamed by hand, the file's lora_alpha is lost and the adapter
runs at alpha = r, 1/8 of its trained strength for the release (r=4, alpha=32).
So kind 1 goes through `unet.load_lora_adapter` with the PEFT config passed as
metadata, and every kind is checked afterwards by counting the LoRA layers that
really sit in the model against the layers in the file.
"""

import dataclasses
import json
from pathlib import Path

from common.errors import UserError
from common.lora_saving import PEFT_PREFIX  # how PEFT's files name the adapted model's weights
from common.saving import read_safetensors
from common.identifier_embeddings import (IDENTIFIER_FILE, attached, load_identifier_embeddings,
                                          read_identifier_embeddings, set_scale)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
TEXT_ENCODER_FOLDER = "text_encoder"


@dataclasses.dataclass
class LoadedAdapter:
    kind: str  # "LoRA" or "TI"
    source: str
    layers: int = 0
    scale: float = 0.0
    token: str = ""
    identifier_tokens: int = 0  # trained token embeddings of the identifier loaded with a LoRA

    def describe(self):
        if self.kind == "LoRA":
            trained = (f", {self.token} with {self.identifier_tokens} trained token embeddings"
                       if self.identifier_tokens else "")
            return f"LoRA {self.source}: {self.layers} layers, scale {float(self.scale)}{trained}"
        return f"TI {self.source}: token {self.token}"


def missing_lora_message(path):
    return (f"no LoRA at {path}: train one with exercise3b_train_lora.py, or download adapter_model.safetensors "
            f"and adapter_config.json from the release into {path}/ (or pass --lora-dir none)")


def lora_module_path(key):
    """'down_blocks.0...to_q.lora_A.weight' -> 'down_blocks.0...to_q' (None for other layouts)."""
    for marker in (".lora_A.", ".lora_B."):
        if marker in key:
            return key.split(marker)[0]
    return None


def count_file_lora_layers(state_dict):
    """How many LoRA layers a state dict describes: one down/A matrix per layer, in any key style."""
    return sum(1 for key in state_dict
               if ".lora_A." in key or key.endswith(("lora.down.weight", "lora_down.weight")))


def injected_lora_layers(pipe, adapter_name):
    """The LoRA layers of `adapter_name` that really sit in the UNet and text encoder."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for model in (pipe.unet, getattr(pipe, "text_encoder", None)):
        if model is None:
            continue
        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "lora_A", {}):
                layers.append(module)
    return layers


def check_lora_fits(unet, state_dict, source):
    """Fail with both shapes when a LoRA was made for a differently shaped base model."""
    for key, tensor in state_dict.items():
        module_path = lora_module_path(key)
        if module_path is None:
            continue
        try:
            module = unet.get_submodule(module_path)
        except AttributeError:
            raise UserError(f"{source} was made for another base model: it adapts a layer '{module_path}' "
                            "that this base model does not have") from None
        want_in, want_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if ".lora_A." in key and tensor.ndim == 2 and want_in is not None and tensor.shape[1] != want_in:
            raise UserError(f"{source} was made for another base model: its layer {module_path} takes "
                            f"{tensor.shape[1]}-wide input, this base model's takes {want_in}-wide "
                            f"(e.g. 768 = SD 1.x text encoder, 1024 = SD 2.x); use the matching --base-model")
        if ".lora_B." in key and tensor.ndim == 2 and want_out is not None and tensor.shape[0] != want_out:
            raise UserError(f"{source} was made for another base model: its layer {module_path} gives "
                            f"{tensor.shape[0]}-wide output, this base model's gives {want_out}-wide; "
                            "use the matching --base-model")


def peft_lora_config_kwargs(folder):
    """The LoraConfig arguments stored in a PEFT adapter_config.json (lora_alpha included)."""
    from peft import LoraConfig

    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (json.JSONDecodeError, TypeError, ValueError, OSError) as error:
        raise UserError(f"{folder / PEFT_CONFIG} is not a valid PEFT LoRA config ({str(error)[:100]}); "
                        "download it again") from None
    fields = {field.name for field in dataclasses.fields(LoraConfig) if field.init}
    return {key: value for key, value in config.to_dict().items() if key in fields}


def find_lora_files(path):
    """Decide which kind of LoRA `path` is: ('peft', folder) or ('diffusers', weights file)."""
    path = Path(path)
    if not path.exists():
        raise UserError(missing_lora_message(path))
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"{path} is not a .safetensors file; only safetensors are read (never pickle)")
        if path.name == PEFT_WEIGHTS:
            return find_lora_files(path.parent)
        return "diffusers", path
    if (path / PEFT_WEIGHTS).is_file():
        if not (path / PEFT_CONFIG).is_file():
            raise UserError(f"{path} has {PEFT_WEIGHTS} but no {PEFT_CONFIG}; download both files of the release")
        return "peft", path
    if (path / DIFFUSERS_WEIGHTS).is_file():
        return "diffusers", path / DIFFUSERS_WEIGHTS
    pickles = sorted(p.name for p in path.glob("*.bin"))
    if pickles:
        raise UserError(f"{path} holds only {', '.join(pickles)} (pickle); this repo reads safetensors only: "
                        f"save the adapter again with safe_serialization=True")
    if not any(path.iterdir()):
        raise UserError(f"{path} is empty. " + missing_lora_message(path))
    raise UserError(f"{path} holds neither {PEFT_WEIGHTS} + {PEFT_CONFIG} nor {DIFFUSERS_WEIGHTS}. "
                    + missing_lora_message(path))


@dataclasses.dataclass
class LoraFile:
    """A LoRA read from disk and checked, not yet put into a model."""

    source: str
    kind: str  # "peft" or "diffusers"
    location: Path
    state_dict: dict
    config_kwargs: dict = None  # PEFT's LoraConfig arguments (kind "peft" only)
    text_encoder: "LoraFile" = None  # the PEFT text_encoder/ subfolder, where there is one
    identifier: tuple = None  # (word, vectors) of identifier_embeddings.safetensors beside it, where there is one

    @property
    def identifier_file(self):
        return (self.location if self.kind == "peft" else self.location.parent) / IDENTIFIER_FILE


def read_lora(path):
    """Find and read a LoRA; every file problem is found here, before any model is loaded."""
    kind, location = find_lora_files(path)
    if kind == "peft":
        state_dict = read_safetensors(location / PEFT_WEIGHTS)
        state_dict = {key.removeprefix(PEFT_PREFIX): value for key, value in state_dict.items()}
        text_encoder = None
        if (location / TEXT_ENCODER_FOLDER / PEFT_WEIGHTS).is_file():
            text_encoder = read_lora(location / TEXT_ENCODER_FOLDER)
        lora = LoraFile(str(path), kind, location, state_dict, peft_lora_config_kwargs(location), text_encoder)
    else:
        lora = LoraFile(str(path), kind, location, read_safetensors(location))
    if lora.identifier_file.is_file():
        lora.identifier = read_identifier_embeddings(lora.identifier_file)
    return lora


def load_lora(pipe, path_or_file, adapter_name="fabric", weight=None):
    """Load a LoRA into `pipe` and prove every layer of the file landed.

    `weight` multiplies the trained strength (1.0 = lora_alpha / r as trained).
    """
    lora = path_or_file if isinstance(path_or_file, LoraFile) else read_lora(path_or_file)
    if lora.kind == "peft":
        check_lora_fits(pipe.unet, lora.state_dict, lora.source)
        # prefix=None: PEFT keys carry no "unet." prefix. metadata: keeps lora_alpha,
        # which diffusers would otherwise guess as alpha = r (1/8 strength for the release).
        pipe.unet.load_lora_adapter(lora.state_dict, prefix=None, metadata=lora.config_kwargs,
                                    adapter_name=adapter_name)
        if lora.text_encoder is not None:
            load_text_encoder_lora(pipe, lora.text_encoder, adapter_name)
    else:
        unet_part = {k.removeprefix("unet."): v for k, v in lora.state_dict.items() if k.startswith("unet.")}
        check_lora_fits(pipe.unet, unet_part, lora.source)
        try:
            # diffusers' own format: its loader reads the alpha from the file's metadata.
            pipe.load_lora_weights(str(lora.location.parent), weight_name=lora.location.name,
                                   adapter_name=adapter_name)
        except (ValueError, RuntimeError, KeyError) as error:
            raise UserError(f"{lora.source} could not be loaded as a LoRA for this base model: "
                            f"{str(error).splitlines()[0][:160]}") from None

    expected = count_file_lora_layers(lora.state_dict)
    if lora.text_encoder is not None:
        expected += count_file_lora_layers(lora.text_encoder.state_dict)
    layers = injected_lora_layers(pipe, adapter_name)
    if not layers or len(layers) < expected:
        raise UserError(f"only {len(layers)} of the {expected} LoRA layers in {lora.source} were loaded into the "
                        "model; the file does not match this base model or this loader")
    loaded = LoadedAdapter("LoRA", lora.source, layers=len(layers))
    if lora.identifier is not None:
        loaded.token = load_identifier_embeddings(pipe, lora.identifier_file, lora.identifier)
        loaded.identifier_tokens = len(attached(pipe.text_encoder).token_ids)
    if weight is not None:
        pipe.set_adapters([adapter_name], adapter_weights=[weight])
        set_scale(pipe.text_encoder, weight)
    loaded.scale = sorted({float(layer.scaling[adapter_name]) for layer in layers})[-1]
    return loaded


def fuse_lora(pipe, adapter_name="fabric"):
    """Add the LoRA's product into the base weights and drop its separate matrices.

    For scripts that only draw with the LoRA at one strength. Unfused, each of
    the 128 LoRA layers of SD 1.5 adds two small matmuls (and, in half
    precision, casts to PEFT's fp32 copies) to every denoising step: hundreds of
    kernel launches a step on a GPU. Fused, the UNet runs exactly as fast as the
    base. The identifier's embeddings, a hook on the text encoder, stay as loaded.
    """
    components = ["unet"] + (["text_encoder"] if any(
        adapter_name in getattr(module, "scaling", {}) for module in pipe.text_encoder.modules()) else [])
    pipe.fuse_lora(components=components, lora_scale=1.0, adapter_names=[adapter_name])
    pipe.unload_lora_weights()  # keeps the fused weights; removes the LoRA layers


def switch_adapters(pipe, on):
    """The LoRA (UNet and text encoder) and the identifier's trained embeddings, on or off together."""
    (pipe.enable_lora if on else pipe.disable_lora)()
    set_scale(pipe.text_encoder, 1.0 if on else 0.0)


def load_text_encoder_lora(pipe, lora, adapter_name):
    """A PEFT-format text-encoder LoRA into pipe.text_encoder, at its own lora_alpha / r.

    diffusers' loader expects keys and metadata under a "text_encoder." prefix (its own
    file's layout), so the PEFT folder's are given one.
    """
    from diffusers import StableDiffusionPipeline

    try:
        StableDiffusionPipeline.load_lora_into_text_encoder(
            {f"{TEXT_ENCODER_FOLDER}.{key}": value for key, value in lora.state_dict.items()}, network_alphas=None,
            text_encoder=pipe.text_encoder, adapter_name=adapter_name, _pipeline=pipe,
            metadata={f"{TEXT_ENCODER_FOLDER}.{key}": value for key, value in lora.config_kwargs.items()})
    except (ValueError, RuntimeError, KeyError) as error:
        raise UserError(f"{lora.source} could not be loaded into this base model's text encoder: "
                        f"{str(error).splitlines()[0][:160]}") from None


def read_textual_inversion(path):
    """(token, vector) from a learned_embeds.safetensors file, checked before any model is loaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no textual-inversion file at {path}: train one with exercise3a_train_textual_inversion.py "
                        "or download learned_embeds.safetensors from the release")
    if path.suffix != ".safetensors":
        raise UserError(f"{path} is not a .safetensors file; only safetensors are read (never pickle)")
    state_dict = read_safetensors(path)
    if len(state_dict) != 1:
        raise UserError(f"{path} should hold one tensor keyed by its token, found {len(state_dict)}")
    return next(iter(state_dict.items()))


def load_textual_inversion(pipe, path):
    """Add the token and vector of a learned_embeds.safetensors file to the tokenizer and text encoder."""
    token, vector = read_textual_inversion(path)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if vector.shape[-1] != width:
        raise UserError(f"{path} was made for another base model: its vector is {vector.shape[-1]}-wide, "
                        f"this text encoder's embeddings are {width}-wide; use the matching --base-model")
    if token in pipe.tokenizer.get_vocab():
        raise UserError(f"token {token} is already in this tokenizer; load each embedding once")
    pipe.load_textual_inversion({token: vector})
    return LoadedAdapter("TI", str(path), token=token)
