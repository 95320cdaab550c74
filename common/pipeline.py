"""Loading the base Stable Diffusion pipeline, from the hub or a local folder.

Every script goes through `load_pipeline` so that the model id, scheduler,
precision and error messages are the same everywhere.
"""

import logging
import os
import warnings
from pathlib import Path

from common.base_model import resolve_model_id
from common.errors import UserError
from common.prompts import IDENTIFIER


def quiet_libraries():
    """Hide library chatter that says nothing to a student (torchvision hints, shard bars)."""
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    # Loading from disk takes seconds; its bars would bury the banner (downloads keep theirs).
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_pipeline(base_model, device, dtype):
    """A StableDiffusionPipeline on `device` in `dtype`, with the DPM-Solver++ scheduler.

    `base_model` is a hub id (looked up in the local Hugging Face cache first,
    so nothing is downloaded twice) or a folder written by `save_pretrained`.
    """
    quiet_libraries()
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from common.base_model import check_base_folder, looks_local

    base_model = resolve_model_id(str(base_model))
    local = Path(base_model).expanduser()
    check_base_folder(base_model)
    # The safety checker is left out: it is a 1.2 GB extra model whose false
    # positives black out harmless fabric images, and it is not part of DreamBooth.
    options = dict(torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    try:
        if looks_local(base_model):
            pipe = StableDiffusionPipeline.from_pretrained(local, **options)
        else:
            try:  # the cache first: quick, and works with no network
                pipe = StableDiffusionPipeline.from_pretrained(base_model, local_files_only=True, **options)
            except OSError:
                print(f"{base_model} is not in the local Hugging Face cache; trying to download it (about 4 GB, once)")
                pipe = StableDiffusionPipeline.from_pretrained(base_model, **options)
    except OSError as error:
        raise UserError(
            f"could not load base model {base_model}: it is not in the Hugging Face cache and could not be "
            f"downloaded ({type(error).__name__}); with no network, fill the cache while online, or pass a "
            "local diffusers folder with --base-model"
        ) from None
    except (ValueError, KeyError) as error:
        raise UserError(f"{base_model} is not a usable Stable Diffusion pipeline: {str(error).splitlines()[0][:160]}") from None

    # DPM-Solver++ reaches in 20-30 steps what the default PNDM needs 50 for.
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    if str(device).startswith("cuda"):
        # The VAE decodes a batch one image at a time: at 512 px its decoder's activations, not the
        # UNet's, are the largest, and this keeps a batch of nine within an 8 GB card. (Not on the
        # CPU: there memory is not short, and batched decoding keeps earlier results bit for bit.)
        pipe.vae.enable_slicing()
    pipe = pipe.to(device)
    if torch.device(device).type == "cpu":
        # On a CPU, oneDNN's convolutions draw faster on channels-last tensors (NHWC); the models stay the
        # same models (docs/performance.md, "Channels last, batches and the optimizer on a CPU"; training
        # does not gain, and common/lora_training.add_lora trains in the default layout).
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(leave=False, desc="denoising")
    return pipe


def subject_token(adapters, override=None):
    """The word(s) that call up the learned fabric in a prompt.

    A LoRA was trained on "sks"; a textual inversion on its own token. With
    both loaded, both words are used; with neither, "sks" stays so that the
    base model's answer to the very same prompt can be compared.
    """
    if override:
        return override
    words = [adapter.token for adapter in adapters if adapter.kind == "TI"]
    if any(adapter.kind == "LoRA" for adapter in adapters) or not words:
        words.insert(0, IDENTIFIER)
    return " ".join(words)


def load_personalized_pipeline(args):
    """Base model + the adapters named by --lora-dir/--ti-file, with a one-line banner.

    Everything that can fail on bad input fails here, before a single picture
    is written, so a mistake never leaves half an output folder behind.
    """
    from common.adapters import fuse_lora, load_lora, load_textual_inversion, read_lora, read_textual_inversion
    from common.base_model import resolve_base
    from common.cli import resolve_batch_size
    from common.device import pick_device
    from common.saving import check_writable

    device, dtype = pick_device(args.device, args.precision, args.threads)
    base, where = resolve_base(args, device)
    resolve_batch_size(args, device)  # after the resolution: small images go in larger batches
    # Adapter files are small: read and check them before spending a minute on the base model.
    lora_dir = None if str(args.lora_dir).lower() in ("", "none") else args.lora_dir
    lora = read_lora(lora_dir) if lora_dir is not None else None
    if args.ti_file:
        read_textual_inversion(args.ti_file)
    check_writable(args.output_dir, "--output-dir")
    pipe = load_pipeline(where, device, dtype)
    adapters = []
    if lora_dir is not None:
        adapters.append(load_lora(pipe, lora, weight=args.lora_weight))
        fuse_lora(pipe)  # these scripts draw with it at one strength: fused, it costs no time
    if args.ti_file:
        adapters.append(load_textual_inversion(pipe, args.ti_file))
    print_banner(base, args.resolution, device, str(dtype).removeprefix("torch."),
                 *([adapter.describe() for adapter in adapters] or ["no adapter (base model only)"]),
                 f"pictures to {args.output_dir}/")
    return pipe, adapters


def print_banner(base, resolution, device, precision, *parts):
    """Every script's first line: the base model, device, precision, what is loaded or trained, where
    the results go. If it names no LoRA layers, the pictures below come from the base model alone."""
    from common.base_model import describe

    print(" | ".join([describe(base, resolution), f"device {device.type}", precision, *parts]))
