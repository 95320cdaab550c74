"""Exercise 3, step 4: textual inversion vs LoRA, side by side.

What this teaches
-----------------
Same prompts, same seeds, three models: the base model, the base model plus
the learned word (textual inversion), and the base model plus the LoRA. TI can
only steer a frozen UNet with one new word, so it catches what that UNet can
already draw (on micro: the subject's layout and cream ground, but not its
teal, docs/micro_model.md); the LoRA changes the UNet's attention and so
reaches the subject's detail and colours.
Each row's title gives what it cost: file size and training time.

What to look at
---------------
outputs/exercise3_ti_vs_lora.png   rows base / TI / LoRA

Run it (after exercise3a and exercise3b)
------
    python exercise3_compare.py
"""

import json
from pathlib import Path

from common.adapters import fuse_lora, load_lora, load_textual_inversion, read_lora, read_textual_inversion
from common.cli import make_parser, resolve_batch_size
from common.device import pick_device
from common.errors import run_script
from common.generation import generate
from common.grids import labelled_grid
from common.base_model import resolve_base
from common.pipeline import load_pipeline, print_banner
from common.prompts import COMPARE_CONTEXTS as CONTEXTS, IDENTIFIER, SUBJECT_CLASS
from common.saving import save_figure


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0])
    # What the trainers wrote for this base (auto: models/micro_trained/... on micro).
    parser.set_defaults(ti_file="auto")
    return parser.parse_args(argv)


def cost(summary_path, files):
    """'3.1 KB, 95 s of training' from a trainer's summary JSON (size alone if there is none)."""
    size = sum(path.stat().st_size for path in files)
    text = f"{size / 1024:.1f} KB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.1f} MB"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        text += f", {summary['wall_seconds']:.0f} s / {summary['optimizer_updates']} updates"
    return text


def main(argv=None):
    args = parse_args(argv)
    device, dtype = pick_device(args.device, args.precision, args.threads)
    resolve_batch_size(args, device)
    base, where = resolve_base(args, device, role="trained_lora")
    lora = read_lora(args.lora_dir)
    read_textual_inversion(args.ti_file)
    pipe = load_pipeline(where, device, dtype)
    print_banner(base, args.resolution, device, str(dtype).removeprefix("torch."),
                 f"compares TI {args.ti_file} and LoRA {args.lora_dir}",
                 f"picture to {args.output_dir / 'exercise3_ti_vs_lora.png'}")
    seeds = [args.seed + index for index in range(len(CONTEXTS))]
    settings = dict(steps=args.steps, resolution=args.resolution, guidance=args.guidance,
                    negative_prompt=args.negative_prompt, batch_size=args.batch_size)

    # Row 1: the base model, asked with the words it has never learned.
    base_prompts = [template.format(subject=f"{IDENTIFIER} {SUBJECT_CLASS}") for template in CONTEXTS.values()]
    rows = [("base model", base_prompts, generate(pipe, base_prompts, seeds, desc="base", **settings))]

    # Row 2: the same prompts with the textual-inversion word.
    ti = load_textual_inversion(pipe, args.ti_file)
    ti_prompts = [template.format(subject=f"{ti.token} {SUBJECT_CLASS}") for template in CONTEXTS.values()]
    rows.append((f"TI ({cost(args.output_dir / 'exercise3a_summary.json', [Path(args.ti_file)])})", ti_prompts,
                 generate(pipe, ti_prompts, seeds, desc="TI", **settings)))

    # Row 3: the LoRA with "sks" (the TI word is not in these prompts, so it stays silent).
    adapter = load_lora(pipe, lora)
    fuse_lora(pipe)  # drawn at one strength from here on: fused, it costs no time
    lora_files = [lora.location / "adapter_model.safetensors"] if lora.kind == "peft" else [lora.location]
    rows.append((f"LoRA ({cost(args.output_dir / 'exercise3b_summary.json', lora_files)}, scale {adapter.scale})",
                 base_prompts, generate(pipe, base_prompts, seeds, desc="LoRA", **settings)))

    images = [image for _, _, row in rows for image in row]
    titles = list(CONTEXTS) * len(rows)
    figure = labelled_grid(images, titles, cols=len(CONTEXTS), row_labels=[label for label, _, _ in rows],
                           suptitle="Same prompts and seeds: base / textual inversion / LoRA")
    path = save_figure(figure, args.output_dir / "exercise3_ti_vs_lora.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    run_script(main)
