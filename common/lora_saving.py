"""Saving a trained LoRA so that every loader finds it at the right strength.

Two files of the same weights are written side by side:

* the PEFT folder (adapter_config.json + adapter_model.safetensors with keys
  `base_model.model.<module>.lora_A.weight`), the release's format, which
  PeftModel.from_pretrained and this repo's loader read; a text-encoder LoRA
  (exercise3b --train-text-encoder) gets a PEFT folder of its own, text_encoder/;
* diffusers' pytorch_lora_weights.safetensors (keys `unet.<module>...` and
  `text_encoder.<module>...`) with each LoRA config in its metadata, so plain
  `pipe.load_lora_weights(folder)` loads it at lora_alpha / r rather than
  guessing alpha = r.

Each file is written under a temporary name and renamed.
"""

import json
import os
import tempfile
from pathlib import Path

from common.saving import atomic_write, save_safetensors

PEFT_PREFIX = "base_model.model."
PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json")
# where each model's PEFT folder goes, relative to the adapter folder
PEFT_FOLDERS = {"unet": ".", "text_encoder": "text_encoder"}


def lora_config_dict(lora_config, base_model):
    config = lora_config.to_dict()
    config["base_model_name_or_path"] = str(base_model)
    config["peft_type"] = "LORA"
    return {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}


def save_peft_folder(folder, lora_state, config):
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors({PEFT_PREFIX + key: value for key, value in lora_state.items()},
                     folder / "adapter_model.safetensors", metadata={"format": "pt"})
    atomic_write(folder / "adapter_config.json",
                 lambda temp: Path(temp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))


def save_lora(folder, lora_states, lora_configs, base_model):
    """Write both formats into `folder`; returns {file name: bytes}.

    lora_states and lora_configs are keyed by model: "unet", and "text_encoder" when it trained too.
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    configs = {role: lora_config_dict(config, base_model) for role, config in lora_configs.items()}
    written = []
    for role, state in lora_states.items():
        save_peft_folder(folder / PEFT_FOLDERS[role], state, configs[role])
        written += [str(Path(PEFT_FOLDERS[role]) / name) for name in PEFT_FILES]
    # diffusers writes the file itself (its metadata layout is its own business);
    # it writes into a scratch folder beside the target, then the file is renamed.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".diffusers-") as scratch:
        arguments = {}
        for role, state in lora_states.items():
            arguments[f"{role}_lora_layers"] = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            arguments[f"{role}_lora_adapter_metadata"] = {
                key: configs[role][key] for key in ("r", "lora_alpha", "target_modules", "init_lora_weights")}
        StableDiffusionPipeline.save_lora_weights(scratch, **arguments)
        os.replace(Path(scratch) / "pytorch_lora_weights.safetensors", folder / "pytorch_lora_weights.safetensors")
    written.append("pytorch_lora_weights.safetensors")
    return {name: (folder / name).stat().st_size for name in written}
