"""The DreamBooth paper's evaluation on a Stable Diffusion model, scored with CLIP and DINO.

The prompts follow the paper's three kinds, in the course's own words:
recontextualization (exercise 1's nine contexts), property change (six
colours) and style (exercise 2's styles), each drawn with several seeds.

Two choices where the paper leaves room:
- CLIP-T compares each picture with its prompt written with the class words
  ("african fabric pattern") in place of the learned phrase: "sks" and a
  textual-inversion token mean nothing to CLIP's own text encoder.
- The paper's DIV uses LPIPS, which is not among this repo's packages; here DIV
  is 1 - cosine of DINO embeddings (CLIP's without DINO), as on micro.
"""

from common.clip_dino import clip_image_embeddings, clip_text_embeddings, dino_embeddings
from common.paper_metrics import colour_similarity, diversity, matched_cosine, mean_pairwise_cosine, real_vs_real
from common.prompts import CLASS_PROMPT, CONTEXTS, STYLES, SUBJECT_CLASS

PROPERTY_COLOURS = ["red", "blue", "green", "purple", "pink", "yellow"]


def prompt_set():
    """[(kind, template)]: "{subject}" in each template becomes the learned phrase."""
    items = [("context", template) for template in CONTEXTS.values()]
    items += [("colour", f"a {colour} and white {{subject}}") for colour in PROPERTY_COLOURS]
    # "a watercolor painting of ..." is a context and a style: drawn once, as a context
    return items + [("style", template) for template in STYLES.values() if template not in CONTEXTS.values()]


def real_bounds(clip, dino, instance_images):
    """Real vs real, the ceiling of subject fidelity, in each embedding there is."""
    bounds = {"clip_i": round(real_vs_real(clip_image_embeddings(clip, instance_images)), 3)}
    if dino is not None:
        bounds["dino"] = round(real_vs_real(dino_embeddings(dino, instance_images)), 3)
    return bounds


def embedding_scores(clip, dino, images, class_prompts, seeds_per_prompt, class_images, instance_images):
    """CLIP-I, CLIP-T, DINO (when loaded), PRES and DIV for pictures drawn `seeds_per_prompt` times a prompt,
    in prompt order; `class_prompts` are their prompts in the class words, one per picture."""
    generated, real = clip_image_embeddings(clip, images), clip_image_embeddings(clip, instance_images)
    scores = {"clip_i": mean_pairwise_cosine(generated, real),
              "clip_t": matched_cosine(generated, clip_text_embeddings(clip, class_prompts))}
    encoder, embed = (clip, clip_image_embeddings) if dino is None else (dino, dino_embeddings)
    if dino is not None:  # PRES and DIV then read DINO's embeddings, as the paper's subject fidelity does
        generated, real = embed(dino, images), embed(dino, instance_images)
        scores["dino"] = mean_pairwise_cosine(generated, real)
    scores["pres"] = mean_pairwise_cosine(embed(encoder, class_images), real)
    scores["div"] = diversity(generated.reshape(len(images) // seeds_per_prompt, seeds_per_prompt, -1))
    return {key: round(value, 3) for key, value in scores.items()}


def measure(pipe, clip, dino, instance_images, subject, *, seeds, steps, resolution, guidance, batch_size,
            negative_prompt=None, name):
    """The paper's numbers for the model in `pipe`, asked about `subject` ("sks african fabric pattern", the
    textual-inversion word's phrase, ...); the colour score as on micro."""
    from common.generation import generate

    items, seeds = prompt_set(), list(seeds)
    settings = dict(steps=steps, resolution=resolution, guidance=guidance, negative_prompt=negative_prompt,
                    batch_size=batch_size)
    prompts = [template.format(subject=subject) for _, template in items for _ in seeds]
    images = generate(pipe, prompts, seeds * len(items), desc=f"measure: {name}", **settings)
    class_images = generate(pipe, [CLASS_PROMPT] * len(seeds), seeds, desc=f"measure: {name}, class prompt",
                            **settings)
    class_prompts = [template.format(subject=SUBJECT_CLASS) for _, template in items for _ in seeds]
    contexts = len(CONTEXTS) * len(seeds)  # the context prompts come first
    without_word = generate(pipe, class_prompts[:contexts], seeds * len(CONTEXTS),
                            desc=f"measure: {name}, without the word", **settings)
    row = embedding_scores(clip, dino, images, class_prompts, len(seeds), class_images, instance_images)
    row["colour_similarity_with_word"] = round(colour_similarity(images[:contexts], instance_images), 3)
    row["colour_similarity_without_word"] = round(colour_similarity(without_word, instance_images), 3)
    row["images"] = len(images) + len(class_images) + len(without_word)
    return row
