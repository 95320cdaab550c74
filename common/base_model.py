"""Which base model a run uses, and the defaults that follow from it.

Two bases are built in:

* `micro`: the repo's own small model (models/micro, 64 px), trained on a
  procedural fabric world; it runs every exercise on a CPU in minutes.
* Stable Diffusion 1.5 (`stable-diffusion-v1-5/stable-diffusion-v1-5`, 512 px),
  the model the course and its release weights were made for.

`--base-model auto` picks SD 1.5 where CUDA is available and micro elsewhere.
The default resolution is the base's native size, and the default adapter
folders are the base's own, so release weights for one base are never loaded
into the other.
"""

import json
from pathlib import Path

from common.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MICRO = "micro"
MICRO_FOLDER = REPO / "models" / "micro"

# The course text names this id; RunwayML removed the repository in 2024 and
# the same weights now live under the stable-diffusion-v1-5 organisation.
RENAMED_MODEL_IDS = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}


def resolve_model_id(base_model):
    """Map retired hub ids to their new home, saying so once."""
    if base_model in RENAMED_MODEL_IDS:
        new_id = RENAMED_MODEL_IDS[base_model]
        print(f"note: {base_model} no longer exists on the hub; using {new_id}")
        return new_id
    return base_model


# Where each base's adapters live: the shipped (release) ones that Exercises 1, 2
# and the morph load, and the folders the trainers write to.
ADAPTER_FOLDERS = {
    MICRO: {"release_lora": "models/micro_release/fabric_lora",
            "trained_lora": "models/micro_trained/fabric_lora",
            "trained_ti": "models/micro_trained/fabric_textual_inversion"},
    SD15: {"release_lora": "models/fabric_lora",
           "trained_lora": "models/fabric_lora",
           "trained_ti": "models/fabric_textual_inversion"},
}


# What "auto" means for the trainers' flags on each base. SD 1.5 keeps diffusers'
# defaults. The micro model's tiny text encoder barely tells "sks" apart from other
# words, so there the identifier's own embeddings train too; its textual inversion
# trains on the noisy end of the schedule, where colours are settled
# (docs/micro_model.md measures each).
# The micro model was pretrained with offset noise (common/forward_diffusion.py says why), so its
# DreamBooth keeps it; SD 1.5 was not. SD 1.5's LoRA is diffusers' (rank 4 on the attention
# projections); micro's draws its subject's shape only with the ResNet convolutions adapted too, at
# rank 16 (the same scale, alpha / r = 8), with the text encoder frozen.
ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]
TRAINING_DEFAULTS = {
    MICRO: {"train_text_encoder": False, "train_identifier": True, "proportion_empty_prompts": 0.0,
            "min_timestep": 700, "offset_noise": 0.1, "rank": 16, "lora_alpha": 128,
            "lora_targets": ATTENTION_PROJECTIONS + ["conv1", "conv2"]},
    SD15: {"train_text_encoder": False, "train_identifier": False, "proportion_empty_prompts": 0.0,
           "min_timestep": 0, "offset_noise": 0.0, "rank": 4, "lora_alpha": 32, "lora_targets": ATTENTION_PROJECTIONS},
}


# Textual inversion's length: SD 1.5 keeps diffusers' example (3,000 updates at 5e-4). On micro the
# word reaches the same judge numbers in 1,500 updates at twice the rate, in half the time
# (docs/micro_model.md, "Textual inversion on micro"). Separate from TRAINING_DEFAULTS because exercise3b
# has flags of the same names with the course's fixed values (800 updates at 1e-4).
TEXTUAL_INVERSION_DEFAULTS = {
    MICRO: {"max_train_steps": 1500, "learning_rate": 1e-3},
    SD15: {"max_train_steps": 3000, "learning_rate": 5e-4},
}


# Denoising steps per image with DPM-Solver++. The judge measures the micro model's pictures at 15 steps
# as at 30 (docs/micro_model.md, "Sampling steps on micro"), and on a CPU each step is a UNet call or two.
# SD 1.5 keeps the course's 30.
SAMPLING_STEPS = {MICRO: 15, SD15: 30}


def resolve_training_defaults(args, table=TRAINING_DEFAULTS):
    """Replace each "auto" among the trainer flags of `table` (TRAINING_DEFAULTS unless told) by the base's
    value (a base model other than micro takes SD 1.5's)."""
    defaults = table.get(args.base_model, table[SD15])
    for flag, value in defaults.items():
        if getattr(args, flag, None) in ("auto", ["auto"]):  # ["auto"]: a list flag given as --flag auto
            setattr(args, flag, list(value) if isinstance(value, list) else value)
    return args


def auto_help(flag, table=TRAINING_DEFAULTS):
    """'auto: on for micro, off for SD 1.5' for a flag's --help text (from `table`, TRAINING_DEFAULTS unless told)."""
    def spoken(value):
        if isinstance(value, list):
            return " ".join(value)
        return ("on" if value else "off") if isinstance(value, bool) else f"{value:g}"
    return f"auto: {spoken(table[MICRO][flag])} for micro, {spoken(table[SD15][flag])} for SD 1.5"


def choose_base(requested, device):
    """'auto' -> SD 1.5 on CUDA, micro elsewhere; anything else as given."""
    if requested == "auto":
        return SD15 if device.type == "cuda" else MICRO
    return requested


def location(base):
    """What from_pretrained should be given for `base`."""
    if base == MICRO:
        if not (MICRO_FOLDER / "model_index.json").is_file():
            raise UserError(f"the micro model is missing from {MICRO_FOLDER}; restore it with git checkout, "
                            "or rebuild it with python -m micro.pretrain")
        return str(MICRO_FOLDER)
    return base


def looks_local(base_model):
    """Whether `base_model` names a folder on this machine rather than a hub id ("owner/name")."""
    return (Path(base_model).expanduser().exists() or base_model.startswith((".", "/", "~"))
            or base_model.count("/") != 1)


def check_base_folder(base_model):
    """A base model given as a folder must be a diffusers folder: checked first, before any adapter,
    since a wrong base is the first thing to fix (its adapters would be judged against it)."""
    if looks_local(base_model) and not (Path(base_model).expanduser() / "model_index.json").is_file():
        raise UserError(f"--base-model {base_model} is not a diffusers folder (no model_index.json there); "
                        "pass a folder written by save_pretrained, micro, or a hub id such as "
                        + RENAMED_MODEL_IDS["runwayml/stable-diffusion-v1-5"])


def describe(base, resolution):
    if base == MICRO:
        return (f"base model: micro (embedded, {resolution} px, CPU); for Stable Diffusion 1.5 use "
                f"--base-model {SD15}")
    return f"base model: {base}"


def native_resolution(base_location):
    """The image size a base was trained at: UNet sample size x VAE downscaling (512 for SD 1.5)."""
    folder = Path(base_location)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError):
        return 512


def adapter_defaults(base):
    """The base's adapter folders; a custom base model uses SD 1.5's names."""
    return ADAPTER_FOLDERS.get(base, ADAPTER_FOLDERS[SD15])


def resolve_base(args, device, role="release_lora"):
    """Fill in the 'auto' values of args from the chosen base; returns (base name, location).

    role names the adapter default that --lora-dir / --adapter-dir takes: 'release_lora'
    for the generation scripts, 'trained_lora' or 'trained_ti' for trainers and comparisons.
    """
    base = choose_base(resolve_model_id(str(args.base_model)), device)
    where = location(base)
    check_base_folder(where)
    if getattr(args, "resolution", "auto") in (None, "auto"):
        args.resolution = native_resolution(where)
    if getattr(args, "steps", None) == "auto":
        args.steps = SAMPLING_STEPS.get(base, SAMPLING_STEPS[SD15])
    defaults = adapter_defaults(base)
    for flag, key in (("lora_dir", role if role.endswith("lora") else "trained_lora"),
                      ("adapter_dir", role), ("ti_file", "trained_ti")):
        if str(getattr(args, flag, None)) == "auto":
            value = defaults[key]
            if flag == "ti_file":
                value = f"{value}/learned_embeds.safetensors"
            setattr(args, flag, value)
    if hasattr(args, "adapter_dir"):
        args.adapter_dir = Path(args.adapter_dir)
    return base, where
