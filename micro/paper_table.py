"""The DreamBooth paper's evaluation, reproduced on the micro world with the judge.

Ruiz et al. (2022) compare methods on subject fidelity (DINO / CLIP-I against
the real photos), prompt fidelity (CLIP-T), and, for prior preservation, on
PRES (how far the class prompt alone drifted toward the subject) and DIV (how
varied one prompt's pictures are). Here the judge (micro/judge.py) plays
DINO's part with its embedding and CLIP-T's with its heads, which read the
asked context, style and colour off each picture. The measures themselves are
common/paper_metrics.py's.

The prompt set follows the paper's three kinds: recontextualization (the
world's seven contexts), property change (colours the world knows) and style
(the world's styles), each drawn with several seeds.
"""

import torch

from common.paper_metrics import accuracy, diversity, mean_pairwise_cosine, real_vs_real
from micro import world
from micro.evaluate import SUBJECT_CONTEXT_PROMPTS, colour_similarity, judged
from micro.world import STYLE_PHRASES

PROPERTY_COLOURS = ["red", "blue", "green", "purple", "pink", "yellow"]
CLASS_PROMPT = "a fabric pattern"  # the prior's prompt: PRES draws it alone
# The paper's numbers (Ruiz et al. 2022, Tables 1 and 3; on Stable Diffusion for Table 1).
PAPER_ROWS = {
    "real images": {"subject_fidelity_dino": 0.774, "subject_fidelity_clip_i": 0.885},
    "DreamBooth (Stable Diffusion)": {"subject_fidelity_dino": 0.668, "subject_fidelity_clip_i": 0.803,
                                      "prompt_fidelity_clip_t": 0.305},
    "Textual Inversion (Stable Diffusion)": {"subject_fidelity_dino": 0.569, "subject_fidelity_clip_i": 0.780,
                                             "prompt_fidelity_clip_t": 0.255},
    "DreamBooth with prior preservation (Imagen)": {"pres": 0.493, "div": 0.391},
    "DreamBooth without prior preservation (Imagen)": {"pres": 0.664, "div": 0.371},
}


def prompt_set(subject):
    """[(kind, prompt, asked label)]: the label is a context, style or colour index of the world."""
    items = [("context", template.format(s=subject), world.CONTEXTS.index(context))
             for context, template in SUBJECT_CONTEXT_PROMPTS.items()]
    items += [("colour", f"a {colour} and white {subject}", world.COLOURS.index(colour))
              for colour in PROPERTY_COLOURS]
    items += [("style", phrases[0].format(x=f"a {subject}"), world.STYLES.index(style))
              for style, phrases in STYLE_PHRASES.items() if style != "plain"]
    return items


def prompt_hits(outputs, items, seeds):
    """{kind: (how many pictures, share in which the judge reads the asked context, style or colour)};
    a colour counts when it is one of the judge's top two."""
    hits = {}
    for kind in ("context", "style", "colour"):
        rows = [(index, label) for index, (item_kind, _, label) in enumerate(items) if item_kind == kind]
        pictures = torch.tensor([index * seeds + seed for index, _ in rows for seed in range(seeds)])
        asked = torch.tensor([label for _, label in rows for _ in range(seeds)])
        if kind == "colour":
            top_two = outputs["colours"][pictures].topk(2, dim=1).indices
            predicted = torch.where((top_two == asked[:, None]).any(1), asked, -1)
        else:
            predicted = outputs[kind][pictures].argmax(1)
        hits[kind] = (len(pictures), accuracy(predicted, asked))
    return hits


def measure(pipe, judge, instance_images, subject, *, seeds, steps, guidance, name):
    """The paper's numbers for the model in `pipe`, asked about `subject` ("sks african fabric pattern", the
    textual-inversion word's phrase, ...)."""
    from common.generation import generate

    items = prompt_set(subject)
    prompts = [prompt for _, prompt, _ in items for _ in seeds]
    images = generate(pipe, prompts, list(seeds) * len(items), steps=steps, resolution=64, guidance=guidance,
                      batch_size=2 * len(seeds), desc=f"measure: {name}")
    class_images = generate(pipe, [CLASS_PROMPT] * len(seeds), list(seeds), steps=steps, resolution=64,
                            guidance=guidance, batch_size=len(seeds), desc=f"measure: {name}, class prompt")
    plain = [template.format(s="african fabric pattern") for template in SUBJECT_CONTEXT_PROMPTS.values()]
    without_word = generate(pipe, [p for p in plain for _ in seeds], list(seeds) * len(plain), steps=steps,
                            resolution=64, guidance=guidance, batch_size=2 * len(seeds), desc=f"measure: {name}, plain")
    real, _ = judged(judge, instance_images)
    embeddings, outputs = judged(judge, images)
    class_embeddings, _ = judged(judge, class_images)
    hits = prompt_hits(outputs, items, len(seeds))
    return {
        "subject_fidelity": round(mean_pairwise_cosine(embeddings, real), 3),
        "prompt_fidelity": round(sum(count * share for count, share in hits.values())
                                 / sum(count for count, _ in hits.values()), 3),
        "prompt_fidelity_by_kind": {kind: round(share, 3) for kind, (_, share) in hits.items()},
        "pres": round(mean_pairwise_cosine(class_embeddings, real), 3),
        "div": round(diversity(embeddings.reshape(len(items), len(seeds), -1)), 3),
        "colour_similarity_with_word": round(colour_similarity(images[:len(SUBJECT_CONTEXT_PROMPTS) * len(seeds)],
                                                               instance_images), 3),
        "colour_similarity_without_word": round(colour_similarity(without_word, instance_images), 3),
        "images": len(images) + len(class_images) + len(without_word),
    }


def combine(runs):
    """One row from the runs of several training seeds: each number's mean, and its spread (standard
    deviation over the seeds) as `<name>_spread` where there is more than one run."""
    import statistics

    row = {}
    keys = {key: run[key] for run in reversed(runs) for key in run}  # every key any run has (the first's value)
    for key, value in keys.items():
        if isinstance(value, dict):
            row[key] = {kind: round(statistics.mean(run[key][kind] for run in runs), 3) for kind in value}
        elif isinstance(value, (int, float)):
            values = [run[key] for run in runs if key in run]
            row[key] = round(statistics.mean(values), 3)
            if len(values) > 1:
                row[f"{key}_spread"] = round(statistics.pstdev(values), 3)
    row["training_seeds"] = len(runs)
    return row


def real_bound(judge, instance_images):
    """Real vs real: the instance images against each other, the ceiling of subject fidelity."""
    real, _ = judged(judge, instance_images)
    return round(real_vs_real(real), 3)


METRICS = [("subject_fidelity", "subject fidelity"), ("prompt_fidelity", "prompt fidelity"), ("pres", "PRES"),
           ("div", "DIV")]


def markdown(report):
    """The measured table beside the paper's, as markdown."""
    lines = [f"Measured on the micro model with its judge: {report['about']}", "",
             "| method | subject fidelity | prompt fidelity | PRES | DIV | colour with word / without | "
             "training | adapter |", "|---|---|---|---|---|---|---|---|",
             f"| real images (the instance images against each other) | {report['real_vs_real']} | | | | | | |"]
    for name, row in report["methods"].items():
        def cell(key):
            return f"{row[key]} ± {row[key + '_spread']}" if key + "_spread" in row else f"{row[key]}"

        seconds = f"{row['training_seconds']:.0f} s" if row.get("training_seconds") else "-"
        size = f"{row['adapter_bytes'] / 1024:.1f} KB" if row.get("adapter_bytes") else "-"
        lines.append(f"| {name} | {cell('subject_fidelity')} | {cell('prompt_fidelity')} | {cell('pres')} "
                     f"| {cell('div')} | {cell('colour_similarity_with_word')} / "
                     f"{cell('colour_similarity_without_word')} | {seconds} | {size} |")
    lines += ["", "The paper's numbers (Ruiz et al. 2022, DreamBooth, Tables 1 and 3; DINO and CLIP embeddings "
              "where this table uses the judge's):", "",
              "| paper row | DINO | CLIP-I | CLIP-T | PRES | DIV |", "|---|---|---|---|---|---|"]
    for name, row in PAPER_ROWS.items():
        cells = [row.get(key, "") for key in ("subject_fidelity_dino", "subject_fidelity_clip_i",
                                              "prompt_fidelity_clip_t", "pres", "div")]
        lines.append(f"| {name} | " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def chart(report):
    """Grouped bars, one group per measure, one colour per method; the real-vs-real bound as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(report["methods"])
    figure, axis = plt.subplots(figsize=(9, 4.2), layout="constrained")
    width = 0.8 / len(methods)
    for offset, method in enumerate(methods):
        values = [report["methods"][method][key] for key, _ in METRICS]
        axis.bar([group + (offset - (len(methods) - 1) / 2) * width for group in range(len(METRICS))], values,
                 width, label=method, color=f"C{offset}")
    axis.hlines(report["real_vs_real"], -0.45, 0.45, colors="black", linestyles="dashed",
                label=f"real vs real ({report['real_vs_real']})")
    axis.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    axis.set_ylim(0, 1.08)
    axis.set_title("The DreamBooth paper's measures on the micro world (higher PRES: the class drifted)")
    axis.legend(fontsize=8, loc="upper right")
    return figure
