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

The judge's family head adds one number the paper has no column for: the
share of pictures drawn in the subject's own pattern family (stars), its shape
apart from its colours; and the rosette detector (micro/rosettes.py), which
needs no judge, counts the subject's rosettes in the context prompts' pictures.
"""

import numpy as np
import torch

from common.paper_evaluation import PROPERTY_COLOURS, embedding_scores
from common.paper_metrics import accuracy, colour_similarity, diversity, mean_pairwise_cosine, real_vs_real
from common.prompts import CLASS_PROMPT, SUBJECT_CLASS
from micro import world
from micro.evaluate import SUBJECT_CONTEXT_PROMPTS, judged
from micro.judge import JUDGE_FAMILIES
from micro.rosettes import shows_subject_pattern
from micro.world import STYLE_PHRASES



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


def measure(pipe, judge, instance_images, subject, *, seeds, steps, guidance, name, clip=None, dino=None):
    """The paper's numbers for the model in `pipe`, asked about `subject` ("sks african fabric pattern", the
    textual-inversion word's phrase, ...); with `clip` (and `dino`) also CLIP-I, CLIP-T (and DINO)."""
    from common.generation import generate

    items = prompt_set(subject)
    prompts = [prompt for _, prompt, _ in items for _ in seeds]
    images = generate(pipe, prompts, list(seeds) * len(items), steps=steps, resolution=64, guidance=guidance,
                      batch_size=2 * len(seeds), desc=f"measure: {name}")
    class_images = generate(pipe, [CLASS_PROMPT] * len(seeds), list(seeds), steps=steps, resolution=64,
                            guidance=guidance, batch_size=len(seeds), desc=f"measure: {name}, class prompt")
    plain = [template.format(s=SUBJECT_CLASS) for template in SUBJECT_CONTEXT_PROMPTS.values()]
    without_word = generate(pipe, [p for p in plain for _ in seeds], list(seeds) * len(plain), steps=steps,
                            resolution=64, guidance=guidance, batch_size=2 * len(seeds), desc=f"measure: {name}, plain")
    real, _ = judged(judge, instance_images)
    embeddings, outputs = judged(judge, images)
    class_embeddings, _ = judged(judge, class_images)
    hits = prompt_hits(outputs, items, len(seeds))
    row = {
        "subject_fidelity": round(mean_pairwise_cosine(embeddings, real), 3),
        "prompt_fidelity": round(sum(count * share for count, share in hits.values())
                                 / sum(count for count, _ in hits.values()), 3),
        "prompt_fidelity_by_kind": {kind: round(share, 3) for kind, (_, share) in hits.items()},
        # the subject's shape alone: the share of pictures the judge calls the subject's family (stars),
        # and, judge-free, the share of the context prompts' pictures (which ask for no other colour or
        # style) in which the rosette detector finds the subject's pattern
        "subject_family": round(accuracy(outputs["family"].argmax(1), JUDGE_FAMILIES.index("stars")), 3),
        "subject_pattern": round(float(np.mean(
            shows_subject_pattern(images[:len(SUBJECT_CONTEXT_PROMPTS) * len(seeds)]))), 3),
        "pres": round(mean_pairwise_cosine(class_embeddings, real), 3),
        "div": round(diversity(embeddings.reshape(len(items), len(seeds), -1)), 3),
        "colour_similarity_with_word": round(colour_similarity(images[:len(SUBJECT_CONTEXT_PROMPTS) * len(seeds)],
                                                               instance_images), 3),
        "colour_similarity_without_word": round(colour_similarity(without_word, instance_images), 3),
        "images": len(images) + len(class_images) + len(without_word),
    }
    if clip is not None:  # PRES and DIV stay the judge's, whose embedding knows this world
        class_prompts = [prompt for _, prompt, _ in prompt_set(SUBJECT_CLASS) for _ in seeds]
        scores = embedding_scores(clip, dino, images, class_prompts, len(seeds), class_images, instance_images)
        row.update({key: scores[key] for key in ("clip_i", "clip_t", "dino") if key in scores})
    return row


def real_bound(judge, instance_images):
    """Real vs real: the instance images against each other, the ceiling of subject fidelity."""
    real, _ = judged(judge, instance_images)
    return {"subject_fidelity": round(real_vs_real(real), 3)}
