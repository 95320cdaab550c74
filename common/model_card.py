"""A model card (README.md) in every adapter folder: what the adapter is, and how to use it.

The Hub and LoRA galleries read a card's YAML header (base_model, tags, instance_prompt);
huggingface_hub's ModelCard writes and reads it. A card written here carries a marker
line, so a later run replaces its own card but never a README the user wrote.
"""

import shutil
from pathlib import Path

from common.saving import atomic_write

CARD = "README.md"
MARKER = "<!-- written by this course's scripts; remove this line to keep your own edits -->"
GRID = "progress_grid.png"
ROLE_NAMES = {"unet": "UNet", "text_encoder": "text-encoder"}


def is_ours(path):
    return MARKER in Path(path).read_text(errors="replace")


def settings_table(settings):
    rows = "\n".join(f"| {name} | {value} |" for name, value in settings.items() if value is not None)
    return f"| setting | value |\n|---|---|\n{rows}\n"


def write_model_card(folder, *, title, tags, base_model, instance_prompt, trigger, summary, settings, losses,
                     diffusers_code, web_ui, grid=None):
    """Write <folder>/README.md unless the user's own README is there; returns its path, or None.

    `grid`: the last progress grid, copied beside the card as progress_grid.png and shown in it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    path = folder / CARD
    if path.exists() and not is_ours(path):
        print(f"note: {path} is your own README; it is kept and no model card is written")
        return None
    shown = ""
    if grid is not None and Path(grid).is_file():
        atomic_write(folder / GRID, lambda temp: shutil.copyfile(grid, temp))
        shown = f"\n## The last progress grid\n\n![the last progress grid]({GRID})\n"
    data = ModelCardData(base_model=str(base_model), tags=list(tags), instance_prompt=instance_prompt,
                         library_name="diffusers")
    loss_rows = "\n".join(f"- {name}: {value}" for name, value in losses.items())
    card = ModelCard(f"""---
{data.to_yaml()}
---
{MARKER}

# {title}

{summary}

Trigger: prompt with `{instance_prompt}` (the word that carries the subject: `{trigger}`).

## Settings

{settings_table(settings)}
## Final losses (smoothed; the evaluation loss on fixed noise where it ran)

{loss_rows}

## Use it in diffusers

```python
{diffusers_code}
```

## Use it in AUTOMATIC1111 or ComfyUI

{web_ui}
{shown}""")
    return atomic_write(path, lambda temp: card.save(temp))


def final_losses(summary):
    """The summary's final smoothed losses and last evaluation losses, as one flat dict."""
    final = summary["final_smoothed_loss"]
    losses = dict(final) if isinstance(final, dict) else {"total": final}
    evaluation = summary.get("evaluation_loss") or {}
    for role, values in evaluation.items():
        if role != "update" and values:
            losses[f"evaluation, {role} (update {evaluation['update'][-1]})"] = values[-1]
    return losses


def last_progress_grid(folder):
    grids = sorted(Path(folder).glob("step_*.png"))
    return grids[-1] if grids else None


def base_for_code(base_model, where):
    """What from_pretrained takes: the Hub id, or the local folder of a model on disk (micro), as seen
    from the repo's root where it is inside the repo."""
    folder = Path(str(where))
    if not folder.is_dir():
        return str(base_model)
    repo = Path(__file__).resolve().parent.parent
    return folder.resolve().relative_to(repo).as_posix() if folder.resolve().is_relative_to(repo) else str(folder)


def on_micro_note(base_model):
    return ("" if base_model != "micro" else
            "\n\nThis adapter was trained on the course's micro model, which the web UIs cannot load (they load "
            "Stable Diffusion checkpoints); the file shows the format. An adapter trained on SD 1.5 loads there.")


def write_lora_card(adapter_dir, *, base_model, where, args, summary, kohya_name, layers, identifier_file, grid,
                    no_web_ui_file=None):
    """The adapter folder's README.md; `no_web_ui_file`: why no file in kohya's layout was written."""
    scale = args.lora_alpha / args.rank
    code = (f'from diffusers import StableDiffusionPipeline\n'
            f'pipe = StableDiffusionPipeline.from_pretrained("{base_for_code(base_model, where)}")\n'
            f'pipe.load_lora_weights("{adapter_dir}", weight_name="pytorch_lora_weights.safetensors")\n'
            f'image = pipe("{args.instance_prompt}").images[0]')
    identifier = ""
    if identifier_file:
        identifier = (f"\n\nThe identifier's trained token embeddings (`{identifier_file}`) are not part of any "
                      "LoRA layout: diffusers' `load_lora_weights` and the web UIs load the LoRA without them. This "
                      f"repo's loader reads them: `python exercise1_generate.py --lora-dir {adapter_dir}`.")
    if no_web_ui_file:
        web_ui = f"No file for the web UIs was written: {no_web_ui_file}." + identifier
    else:
        layer_text = " and ".join(f"{count} {ROLE_NAMES[role]}" for role, count in layers.items())
        web_ui = (f"Copy `{kohya_name}` into `stable-diffusion-webui/models/Lora/` (AUTOMATIC1111) or "
                  f"`ComfyUI/models/loras/` (ComfyUI's LoraLoader node), and prompt "
                  f"`<lora:{Path(kohya_name).stem}:1> {args.instance_prompt}`. It holds the {layer_text} LoRA "
                  f"layers in kohya's layout, at the trained scale alpha / r = {scale:g}." + identifier
                  + on_micro_note(base_model))
    settings = {"optimizer updates": summary["optimizer_updates"], "rank r": args.rank, "lora_alpha": args.lora_alpha,
                "scale (alpha / r)": f"{scale:g}", "learning rate": args.learning_rate,
                "UNet modules": " ".join(args.lora_targets), "resolution": args.resolution,
                "batch size": args.train_batch_size, "prior preservation": args.prior_preservation,
                "class prompt": " / ".join(args.class_prompt) if args.prior_preservation else None,
                "class images": args.num_class_images if args.prior_preservation else None,
                "prior loss weight": args.prior_loss_weight if args.prior_preservation else None,
                "text encoder LoRA": args.train_text_encoder, "identifier embeddings trained": args.train_identifier,
                "empty-prompt share": args.proportion_empty_prompts,
                "offset noise": args.offset_noise, "seed": args.seed}
    return write_model_card(
        adapter_dir, title=f"DreamBooth LoRA: {args.instance_prompt}", tags=["lora", "dreambooth", "diffusers"],
        base_model=base_model, instance_prompt=args.instance_prompt, trigger=args.identifier,
        summary=f"A DreamBooth LoRA with{'' if args.prior_preservation else 'out'} prior preservation, trained on "
                f"{base_model} by the course's `exercise3b_train_lora.py`.",
        settings=settings, losses=final_losses(summary), diffusers_code=code, web_ui=web_ui, grid=grid)


def write_embedding_card(adapter_dir, *, base_model, where, args, summary, embedding_file, web_ui_file, grid):
    token = args.placeholder_token
    code = (f'from diffusers import StableDiffusionPipeline\n'
            f'pipe = StableDiffusionPipeline.from_pretrained("{base_for_code(base_model, where)}")\n'
            f'pipe.load_textual_inversion("{Path(adapter_dir) / embedding_file}")\n'
            f'image = pipe("a dress made of {token} fabric pattern").images[0]')
    web_ui = (f"Copy `{web_ui_file}` into `stable-diffusion-webui/embeddings/` (AUTOMATIC1111) or "
              f"`ComfyUI/models/embeddings/` and write its file name in the prompt: "
              f"`a dress made of {Path(web_ui_file).stem} fabric pattern` (ComfyUI: `embedding:{Path(web_ui_file).stem}`). "
              f"diffusers reads that file too: `pipe.load_textual_inversion(\"{Path(adapter_dir) / web_ui_file}\", "
              f"token=\"{token}\")`." + on_micro_note(base_model))
    settings = {"optimizer updates": summary["optimizer_updates"], "learning rate": args.learning_rate,
                "initializer token": args.initializer_token, "resolution": args.resolution,
                "batch size": args.train_batch_size, "lowest timestep trained": args.min_timestep, "seed": args.seed}
    return write_model_card(
        adapter_dir, title=f"Textual inversion: {token}", tags=["textual-inversion", "diffusers"],
        base_model=base_model, instance_prompt=f"a textile in the style of {token}", trigger=token,
        summary=f"One new word vector, `{token}`, trained on {base_model} by the course's "
                "`exercise3a_train_textual_inversion.py`; the model itself is unchanged.",
        settings=settings, losses=final_losses(summary), diffusers_code=code, web_ui=web_ui, grid=grid)
