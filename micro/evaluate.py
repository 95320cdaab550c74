"""Measuring the micro model with the judge, as the DreamBooth paper measures SD with CLIP and DINO.

* `base_report`: the base model on held-out (family, context, style)
  combinations that pretraining never showed: how often the judge sees the
  asked context, style, family and colours (chance is about 1 in 8).
* `subject_report`: after DreamBooth, prompts with "sks" against the same
  prompts without it and against the untouched base: judge-embedding
  similarity to the training images (the DINO-score analogue), the share of
  images the judge calls the subject's family, the share in which the
  judge-free rosette detector finds the subject's pattern (micro/rosettes.py),
  and context accuracy; and the
  base model on both, as the reference for "without sks nothing changed".
* `word_report`: the same for a textual-inversion word, with it and without.
  Both add a judge-free number, the colour-histogram intersection with the
  training images (`colour_similarity`).
* `drift_by_guidance`: how far the adapter moves a few prompts at guidance 1
  and 7.5: classifier-free guidance multiplies a small drift.

    python -m micro.evaluate                                           # base report
    python -m micro.evaluate --lora-dir models/micro_release/fabric_lora   # and the subject report
    python -m micro.evaluate --lora-dir models/micro_trained/fabric_lora --subject-only   # after exercise3b
    python -m micro.evaluate --lora-dir models/micro_trained/fabric_lora --subject-only --seeds 0   # a quicker look
    python -m micro.evaluate --lora-dir models/micro_release/fabric_lora --guidance-study
    python -m micro.evaluate --ti-file models/micro_trained/fabric_textual_inversion/learned_embeds.safetensors \
        --subject-only                                                 # after exercise3a
"""

import json

import numpy as np
import torch

from common.base_model import MICRO, SAMPLING_STEPS
from common.paper_metrics import colour_similarity
from micro import world
from micro.judge import COLOUR_STYLES, JUDGE_FAMILIES, load_judge, to_batch
from micro.rosettes import MIN_ROSETTES, count_rosettes

STEPS = SAMPLING_STEPS[MICRO]  # what the scripts draw with on micro, so the report measures what students see
SUBJECT_SEEDS = (0, 1, 2, 3)  # pictures per context in the subject and word reports

SUBJECT_CONTEXT_PROMPTS = {
    "swatch": "a {s}, vibrant colors, high quality fabric swatch",
    "dress": "a dress made of {s}",
    "wallpaper": "{s} as wallpaper in a modern living room",
    "handbag": "a handbag made of {s}, product photography",
    "vase": "a ceramic vase decorated with {s}",
    "basket": "a woven basket with {s}",
    "cushion": "a cushion made of {s}",
}


def judged(judge, images):
    with torch.no_grad():
        embedding, outputs = judge(to_batch(images))
    return embedding, {name: value for name, value in outputs.items()}


def base_report(pipe, judge=None, count=112, seed=7, steps=STEPS, guidance=7.5, batch_size=16):
    from common.generation import generate

    judge = judge or load_judge()
    rng = np.random.default_rng(seed)
    specs = [world.random_spec(rng, held_out_only=True) for _ in range(count)]
    prompts = [world.caption(spec, rng, phrase=f"{spec['colours'][0]} and {spec['colours'][1]} "
                             f"{world.FAMILY_WORDS[spec['family']]} fabric pattern") for spec in specs]
    images = generate(pipe, prompts, list(range(count)), steps=steps, resolution=64, guidance=guidance,
                      batch_size=batch_size, desc="judge: base model")
    _, outputs = judged(judge, images)
    hits = {"context": outputs["context"].argmax(1) == torch.tensor([world.CONTEXTS.index(s["context"]) for s in specs]),
            "style": outputs["style"].argmax(1) == torch.tensor([world.STYLES.index(s["style"]) for s in specs]),
            "family": outputs["family"].argmax(1) == torch.tensor([JUDGE_FAMILIES.index(s["family"]) for s in specs])}
    colour_rows = [i for i, s in enumerate(specs) if s["style"] in COLOUR_STYLES]
    top2 = outputs["colours"][colour_rows].topk(2, dim=1).indices.sort(1).values
    truth = torch.tensor([sorted(world.COLOURS.index(c) for c in specs[i]["colours"]) for i in colour_rows])
    # "Dominant colour": at least one of the two asked colours is among the judge's top two.
    dominant = [(set(top2[r].tolist()) & set(truth[r].tolist())) != set() for r in range(len(colour_rows))]
    report = {name: round(value.float().mean().item(), 3) for name, value in hits.items()}
    report["dominant_colour"] = round(float(np.mean(dominant)), 3) if dominant else None
    report["both_colours"] = round((top2 == truth).all(1).float().mean().item(), 3) if dominant else None
    report["images"] = count
    return report, images, prompts


def reference_embedding(judge, instance_images):
    """The training images' mean judge embedding, unit length: what "looks like the subject" means."""
    embedding, _ = judged(judge, instance_images)
    return torch.nn.functional.normalize(embedding.mean(0, keepdim=True), dim=1)


def similarities(judge, images, reference):
    """Each image's cosine similarity to the reference embedding, and the judge's other outputs."""
    embedding, outputs = judged(judge, images)
    return (torch.nn.functional.normalize(embedding, dim=1) @ reference.T).squeeze(1), outputs


def judged_contexts(pipe, judge, reference, instance_images, subject, seeds, steps, guidance, desc):
    """The seven contexts' prompts about `subject`, drawn and judged: similarity to the training images,
    the subject's family, the asked context, the colours."""
    from common.generation import generate

    contexts = list(SUBJECT_CONTEXT_PROMPTS)
    prompts = [SUBJECT_CONTEXT_PROMPTS[c].format(s=subject) for c in contexts for _ in seeds]
    all_seeds = [seed for _ in contexts for seed in seeds]
    images = generate(pipe, prompts, all_seeds, steps=steps, resolution=64, guidance=guidance,
                      batch_size=len(seeds) * 2, desc=f"judge: {desc}")
    similarity, outputs = similarities(judge, images, reference)
    truth = torch.tensor([world.CONTEXTS.index(c) for c in contexts for _ in seeds])
    rosettes = np.array(count_rosettes(images))  # counted once: both numbers below read it
    return {
        "similarity_to_training_images": round(similarity.mean().item(), 3),
        "judged_as_subject_family": round((outputs["family"].argmax(1) == JUDGE_FAMILIES.index("stars"))
                                          .float().mean().item(), 3),
        # judge-free: pictures with at least two of the subject's rosettes (micro/rosettes.py)
        "subject_pattern": round(float(np.mean(rosettes >= MIN_ROSETTES)), 3),  # as shows_subject_pattern
        "rosettes_per_picture": round(float(rosettes.mean()), 2),
        "context_accuracy": round((outputs["context"].argmax(1) == truth).float().mean().item(), 3),
        "colour_similarity": round(colour_similarity(images, instance_images), 3),
        # the leak past the identifier differs by context (a swatch is not a vase), so each is shown
        "similarity_by_context": {c: round(similarity[i * len(seeds):(i + 1) * len(seeds)].mean().item(), 3)
                                  for i, c in enumerate(contexts)},
        "images": len(images),
    }


def subject_report(pipe, instance_images, judge=None, seeds=SUBJECT_SEEDS, steps=STEPS, guidance=7.5, lora=True):
    """Judge numbers for 'sks' prompts and the same prompts without 'sks', with the LoRA and without.

    The lesson holds when 'lora_with_sks' is far from 'base_with_sks' (the subject was
    learned) while 'lora_without_sks' stays near 'base_without_sks' (only the identifier
    carries it: no language drift)."""
    from common.adapters import switch_adapters

    judge = judge or load_judge()
    reference = reference_embedding(judge, instance_images)
    runs = {}
    variants = [("lora_with_sks", "sks african fabric pattern", True),
                ("lora_without_sks", "african fabric pattern", True),
                ("base_with_sks", "sks african fabric pattern", False),
                ("base_without_sks", "african fabric pattern", False)]
    for name, subject, adapter_on in variants:
        if lora:
            # off means the base model exactly: UNet and text-encoder LoRA and the identifier's embeddings
            switch_adapters(pipe, adapter_on)
        runs[name] = judged_contexts(pipe, judge, reference, instance_images, subject, seeds, steps, guidance, name)
    if lora:
        switch_adapters(pipe, True)
    return runs


def word_report(pipe, instance_images, word, judge=None, seeds=SUBJECT_SEEDS, steps=STEPS, guidance=7.5):
    """The same numbers for a textual-inversion word: prompts with it, and the base model's answer to the
    same prompts without it (a learned word changes nothing else)."""
    judge = judge or load_judge()
    reference = reference_embedding(judge, instance_images)
    return {name: judged_contexts(pipe, judge, reference, instance_images, subject, seeds, steps, guidance, name)
            for name, subject in ((f"with_{word}", f"{word} african fabric pattern"),
                                  ("without_it", "african fabric pattern"))}


DRIFT_PROMPTS = {"class prompt (prior)": "a fabric pattern", "class noun": "an african fabric pattern",
                 "identifier": "a sks african fabric pattern"}


def drift_by_guidance(pipe, instance_images, judge=None, guidances=(1.0, 7.5), seeds=range(12), steps=STEPS,
                      prompts=DRIFT_PROMPTS):
    """How far the adapter moves each prompt's pictures toward the training images, per guidance scale.

    Classifier-free guidance predicts noise as uncond + w * (cond - uncond), so a change
    the adapter makes to a prompt's conditional prediction reaches the picture about w
    times over. A drift too small to see at w = 1 can be plain at the default 7.5.
    Returns {guidance: {prompt name: {"base": similarity, "lora": similarity, "moved": lora - base}}}.
    """
    from common.adapters import switch_adapters
    from common.generation import generate

    judge = judge or load_judge()
    reference = reference_embedding(judge, instance_images)
    seeds = list(seeds)
    report = {}
    for guidance in guidances:
        report[guidance] = {}
        for name, prompt in prompts.items():
            row = {}
            for state, adapter_on in (("base", False), ("lora", True)):
                switch_adapters(pipe, adapter_on)
                images = generate(pipe, [prompt] * len(seeds), seeds, steps=steps, resolution=64,
                                  guidance=guidance, batch_size=len(seeds), desc=f"judge: {name}, w={guidance}")
                row[state] = round(similarities(judge, images, reference)[0].mean().item(), 3)
            row["moved"] = round(row["lora"] - row["base"], 3)
            report[guidance][name] = row
    switch_adapters(pipe, True)
    return report


def main(argv=None):
    import argparse

    from common.adapters import load_lora
    from common.base_model import MICRO_FOLDER, REPO
    from common.pipeline import load_pipeline
    from common.training_images import load_training_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lora-dir", default=None, help="also report on this LoRA (subject report)")
    parser.add_argument("--guidance-study", action="store_true",
                        help="with --lora-dir: how much each guidance scale magnifies the LoRA's drift")
    parser.add_argument("--ti-file", default=None,
                        help="also report on this textual-inversion embedding (prompts with its word)")
    parser.add_argument("--subject-only", action="store_true",
                        help="with --lora-dir: skip the base report (112 images of held-out combinations)")
    parser.add_argument("--output", default=None, help="also write the report to this JSON file")
    parser.add_argument("--steps", type=int, default=STEPS, help="denoising steps per image (the scripts' default on micro)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SUBJECT_SEEDS),
                        help="seeds per context in the subject and word reports (fewer: a quicker, noisier look)")
    args = parser.parse_args(argv)
    pipe = load_pipeline(str(MICRO_FOLDER), torch.device("cpu"), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    report = {} if args.subject_only and (args.lora_dir or args.ti_file) else {
        "base": base_report(pipe, steps=args.steps)[0]}
    if args.ti_file:
        from common.adapters import load_textual_inversion

        word = load_textual_inversion(pipe, args.ti_file).token
        report["textual_inversion"] = word_report(pipe, load_training_images(REPO / "training_images", 64), word,
                                                  seeds=args.seeds, steps=args.steps)
    if args.lora_dir:
        load_lora(pipe, args.lora_dir, adapter_name="default")
        instance_images = load_training_images(REPO / "training_images", 64)
        report["subject"] = subject_report(pipe, instance_images, seeds=args.seeds, steps=args.steps)
        if args.guidance_study:
            report["drift_by_guidance"] = drift_by_guidance(pipe, instance_images, steps=args.steps)
    print(json.dumps(report, indent=2))
    if args.output:
        from common.saving import save_json

        save_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
