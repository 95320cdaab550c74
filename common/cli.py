"""The command-line flags every script shares, with their checks.

Each script builds its parser with `make_parser` so that `--base-model`,
`--lora-dir`, `--steps` and friends mean the same thing everywhere and show
their defaults in `--help`. Bad values stop at the parser with one line.
"""

import argparse
import sys
from pathlib import Path

from common.base_model import MICRO, SAMPLING_STEPS, SD15


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line and exits 1 like every other user error."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(1)


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def auto_or(convert):
    """An argparse type that takes "auto" (resolved later, per base model) or whatever `convert` takes."""
    def parse(text):
        return "auto" if text == "auto" else convert(text)
    parse.__name__ = convert.__name__  # argparse names the type in its error messages
    return parse


def share(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "gray": (128, 128, 128)}


def colour(text):
    """'white', 'black', 'grey' or 'R,G,B' (0-255 each) -> an (R, G, B) tuple."""
    if text.lower() in NAMED_COLOURS:
        return NAMED_COLOURS[text.lower()]
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= value <= 255 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a colour: use white, black, grey or R,G,B (0-255 each)")
    return values


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def image_size(text):
    value = positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of 8 (the VAE halves the image 3 times), got {text}; try {max(8, round(value / 8) * 8)}"
        )
    return value


# Images of this size and below are drawn in the script's larger (CUDA) batches on any device: micro's
# 64 px pictures take little memory, and on a CPU larger batches draw each picture faster
# (docs/performance.md, "Channels last, batches and the optimizer on a CPU").
SMALL_IMAGE = 128


def make_parser(description, *, seed=42, output_dir="outputs", batch_size=1, cuda_batch_size=9, adapters=True):
    """A parser holding the flags shared by all scripts.

    Training scripts pass adapters=False: they make an adapter rather than load
    one, and use the sampling flags only for their progress grids.
    `batch_size` / `cuda_batch_size`: what --batch-size auto means without and with CUDA.
    """
    parser = OneLineParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--base-model", default="auto",
                       help="'micro' (the embedded 64 px model), a hub id such as "
                            "stable-diffusion-v1-5/stable-diffusion-v1-5, or a local diffusers folder; "
                            "auto: SD 1.5 with CUDA, micro without")
    if adapters:
        add_adapter_flags(model)
    model.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                       help="where to run; auto picks cuda, then mps, then cpu")
    model.add_argument("--threads", type=auto_or(positive_int), default="auto",
                       help="CPU threads; auto: one per physical core, or 1 while other work keeps the CPU busy")
    if adapters:
        model.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                           help="the weights' number format; auto: fp16 on CUDA, fp32 elsewhere "
                                "(bf16 also runs on a CPU, slowly)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=auto_or(positive_int), default="auto",
                          help=f"denoising steps per image; auto: {SAMPLING_STEPS[MICRO]} for micro, "
                               f"{SAMPLING_STEPS[SD15]} for SD 1.5")
    sampling.add_argument("--guidance", type=non_negative_float, default=7.5,
                          help="classifier-free guidance scale")
    sampling.add_argument("--seed", type=int, default=seed,
                          help="random seed of the first image" if adapters else
                          "seed of the training's random draws (images, noise, timesteps); the progress grids "
                          "keep their own seeds")
    sampling.add_argument("--resolution", type=auto_or(image_size), default="auto",
                          help="image width and height in pixels; auto: the base's own (64 micro, 512 SD 1.5)")
    if adapters:
        sampling.add_argument("--negative-prompt", default=None,
                              help="what to steer away from, e.g. 'blurry, distorted'")
        sampling.add_argument("--batch-size", type=auto_or(positive_int), default="auto",
                              help=f"images per pipeline call (more is faster, needs more memory); auto: "
                                   f"{cuda_batch_size} on CUDA or for images of {SMALL_IMAGE} px and less "
                                   f"(micro), {batch_size} elsewhere")
        parser.set_defaults(auto_batch_sizes=(batch_size, cuda_batch_size))
    parser.add_argument("--output-dir", type=Path, default=Path(output_dir), help="where pictures are written")
    return parser


def resolve_batch_size(args, device):
    """--batch-size auto -> the script's own default: its larger batch on CUDA and for small images
    (args.resolution, already resolved) anywhere, its smaller one for large images off CUDA."""
    if args.batch_size == "auto":
        cpu, cuda = args.auto_batch_sizes
        args.batch_size = cuda if device.type == "cuda" or args.resolution <= SMALL_IMAGE else cpu
    return args.batch_size


def add_adapter_flags(model):
    model.add_argument("--lora-dir", default="auto",
                       help="LoRA to load: a PEFT folder (adapter_config.json + adapter_model.safetensors), "
                            "a diffusers folder or .safetensors file (pytorch_lora_weights.safetensors); "
                            "'none' runs the base model alone; auto: models/micro_release/fabric_lora on micro, "
                            "models/fabric_lora on SD 1.5")
    model.add_argument("--lora-weight", type=non_negative_float, default=None,
                       help="multiply the LoRA's trained strength (lora_alpha / r) by this; 0 switches it off")
    model.add_argument("--ti-file", default=None,
                       help="textual-inversion embedding to load (learned_embeds.safetensors)")
    model.add_argument("--token", default=None,
                       help="the word(s) in prompts that call up the subject; default: 'sks' for a LoRA, "
                            "the embedding's own token for --ti-file alone")


def add_training_flags(parser, *, max_train_steps, learning_rate, checkpoint_every, progress_every, weights,
                       adapter_dir_help, auto_means=None):
    """The flags both trainers share, in --help's data, training and output groups; returns the data and
    training groups for the trainer's own flags. `weights` names what the run writes, for the help texts.
    `max_train_steps` and `learning_rate` may be "auto" (resolved per base later); `auto_means(flag)` then
    says in --help what auto is.
    """
    data = parser.add_argument_group("data")
    data.add_argument("--instance-dir", type=Path, default=Path("training_images"), help="your subject's images")
    data.add_argument("--alpha-background", type=colour, default="white",
                      help="the colour that transparent parts of your images are filled with: a name "
                           "(white, black, grey) or R,G,B")
    data.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                      help="mirror each drawn image at random (half of the time)")
    train = parser.add_argument_group("training")
    for flag, convert, default, what in (("max_train_steps", positive_int, max_train_steps, "optimizer updates"),
                                         ("learning_rate", positive_float, learning_rate, "AdamW learning rate")):
        auto = default == "auto"
        train.add_argument("--" + flag.replace("_", "-"), type=auto_or(convert) if auto else convert, default=default,
                           help=f"{what}; {auto_means(flag)}" if auto else what)
    train.add_argument("--train-batch-size", type=positive_int, default=1, help="instance images per update")
    train.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                       help="auto: fp16 on CUDA, none on CPU (bf16 and fp16 also run on a CPU, slowly; the "
                            "tests check the GPU path that way)")
    train.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                       help="encode the images with the frozen VAE once, not every update (and the prompts, "
                            "where the text encoder is frozen); --no-cache is slower, for measuring")
    train.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every,
                       help="updates between checkpoints")
    train.add_argument("--checkpoints-total-limit", type=positive_int, default=None,
                       help="keep only the newest N checkpoints, deleting older ones once a new one is written; "
                            "None keeps them all")
    train.add_argument("--progress-every", type=positive_int, default=progress_every,
                       help="updates between progress grids and evaluation losses")
    out = parser.add_argument_group("output")
    out.add_argument("--adapter-dir", default="auto", help=f"where {weights} and its checkpoints go; {adapter_dir_help}")
    out.add_argument("--resume", default=None, help="'latest' or a checkpoint-N folder to continue from")
    out.add_argument("--overwrite", action="store_true",
                     help=f"replace {weights} already in --adapter-dir (the old files are moved to a backup)")
    parser.set_defaults(seed=0)  # the seed of training; progress grids keep their own seeds
    return data, train
