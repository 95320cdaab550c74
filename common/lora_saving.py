"""Saving a trained LoRA so that every loader finds it at the right strength.

Two files of the same weights are written side by side:

* the PEFT folder (adapter_config.json + adapter_model.safetensors with keys
  `base_model.model.<module>.lora_A.weight`), the release's format, which
  PeftModel.from_pretrained and this repo's loader read;
* diffusers' pytorch_lora_weights.safetensors (keys `unet.<module>...`) with
  the LoRA config in its metadata, so plain `pipe.load_lora_weights(folder)`
  loads it at lora_alpha / r rather than guessing alpha = r.

Each file is written under a temporary name and renamed.
"""

import json
import os
import tempfile
from pathlib import Path

from common.saving import atomic_write, save_safetensors

PEFT_PREFIX = "base_model.model."


def lora_config_dict(lora_config, base_model):
    config = lora_config.to_dict()
    config["base_model_name_or_path"] = str(base_model)
    config["peft_type"] = "LORA"
    return {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}


def save_lora(folder, lora_state, lora_config, base_model):
    """Write both formats into `folder`; returns {file name: bytes}."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = lora_config_dict(lora_config, base_model)
    save_safetensors({PEFT_PREFIX + key: value for key, value in lora_state.items()},
                     folder / "adapter_model.safetensors", metadata={"format": "pt"})
    atomic_write(folder / "adapter_config.json",
                 lambda temp: Path(temp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    # diffusers writes the file itself (its metadata layout is its own business);
    # it writes into a scratch folder beside the target, then the file is renamed.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".diffusers-") as scratch:
        metadata = {key: config[key] for key in ("r", "lora_alpha", "target_modules", "init_lora_weights")}
        StableDiffusionPipeline.save_lora_weights(scratch, unet_lora_layers={k: v.detach().cpu().contiguous()
                                                                            for k, v in lora_state.items()},
                                                  unet_lora_adapter_metadata=metadata)
        os.replace(Path(scratch) / "pytorch_lora_weights.safetensors", folder / "pytorch_lora_weights.safetensors")
    return {name: (folder / name).stat().st_size
            for name in ("adapter_model.safetensors", "adapter_config.json", "pytorch_lora_weights.safetensors")}
