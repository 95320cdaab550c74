"""Export an adapter for AUTOMATIC1111 and ComfyUI: one .safetensors file each.

What this teaches
-----------------
An adapter is a handful of matrices (a LoRA) or one vector (textual inversion);
what differs between tools is only how the file names them. The web UIs read a
LoRA in kohya's layout, `lora_unet_<module>.lora_down.weight` with a per-module
`.alpha`, and an embedding as one tensor named after its file. The training
scripts already write both; this script converts an adapter you have, such as
the course's release LoRA, which is a PEFT folder the web UIs ignore without a
word (they then draw with the base model alone).

The alpha is what a careless conversion loses: the release trains at alpha / r =
32 / 4 = 8, and a file that says alpha = r runs it at 1/8 strength. Each module's
alpha is written from the adapter's own config (common/web_ui_files.py).

What to look at
---------------
<lora-dir>/<folder name>_kohya.safetensors   the LoRA, for models/Lora/ (A1111) or models/loras/ (ComfyUI)
<ti-file's folder>/<word>.safetensors        the word, for embeddings/; prompt with the file's name

Run it
------
    python export_adapter.py --lora-dir models/fabric_lora
    python export_adapter.py --ti-file models/fabric_textual_inversion/learned_embeds.safetensors
"""

import argparse
from pathlib import Path

from common.cli import OneLineParser
from common.errors import run_script


def parse_args(argv=None):
    parser = OneLineParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    adapter = parser.add_mutually_exclusive_group(required=True)
    adapter.add_argument("--lora-dir", type=Path,
                         help="a LoRA: PEFT folder (with text_encoder/ where it trained), or diffusers' "
                              "pytorch_lora_weights.safetensors (folder or file)")
    adapter.add_argument("--ti-file", type=Path, help="a textual-inversion learned_embeds.safetensors")
    parser.add_argument("--output", type=Path, default=None,
                        help="the file to write; default: beside the adapter, as the table above says")
    parser.add_argument("--overwrite", action="store_true", help="replace a file of that name")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from common.adapters import read_lora, read_textual_inversion
    from common.web_ui_files import embedding_file_name, kohya_file_name, save_kohya_lora, save_web_ui_embedding

    if args.lora_dir is not None:
        lora = read_lora(args.lora_dir)  # every file problem is one line here
        folder = lora.location if lora.kind == "peft" else lora.location.parent
        output = args.output or folder / kohya_file_name(folder)
        layers = save_kohya_lora(lora, output, overwrite=args.overwrite)
        counted = " + ".join(f"{count} {role.replace('_', ' ')} layers" for role, count in layers.items())
        print(f"wrote {output}: {counted} in kohya's layout, at the trained scale")
        if lora.identifier is not None:
            print(f"note: {lora.identifier_file.name} (the identifier's trained token embeddings) has no place in "
                  "that layout; the web UIs load the LoRA without it")
    else:
        token, vector = read_textual_inversion(args.ti_file)
        output = args.output or args.ti_file.parent / embedding_file_name(token)
        save_web_ui_embedding(token, vector, output, overwrite=args.overwrite)
        print(f"wrote {output}: the word {token}; in AUTOMATIC1111 and ComfyUI write {output.stem} in the prompt")


if __name__ == "__main__":
    run_script(main)
