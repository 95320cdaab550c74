"""The course's prompts, all in one place.

The exercises draw with them, the trainers train on them and draw their
progress grids with them, and the micro model's tokenizer learned every word
of them as a whole token (micro/tokenizer.py), so that the identifier "sks" is
the one word it has never seen, as a rare token is for real CLIP.

"{subject}" becomes the learned phrase: "sks african fabric pattern" for a
LoRA, the textual-inversion token for an embedding (see `subject_token` in
common/pipeline.py).
"""

SUBJECT_CLASS = "african fabric pattern"
IDENTIFIER = "sks"

# --- Exercise 1: the nine contexts of the course (file name -> prompt) ---------------------------
CONTEXTS = {
    "swatch": "a {subject}, vibrant colors, high quality fabric swatch",
    "dress": "a beautiful dress made of {subject}, fashion photography",
    "wallpaper": "{subject} as wallpaper in a modern living room",
    "watercolor": "a watercolor painting of {subject}",
    "handbag": "a handbag made of {subject}, product photography",
    "vase": "a ceramic vase decorated with {subject}",
    "cyberpunk": "a cyberpunk city scene with {subject}, neon lights",
    "basket": "a woven basket with {subject}",
    "geometric_art": "abstract geometric art inspired by {subject}",
}

# --- Exercise 2: the guidance sweep, the styles, the seed study ----------------------------------
GUIDANCE_PROMPT = "a beautiful dress made of {subject}, fashion photography"
STYLES = {  # title -> prompt
    "photorealistic": "a photorealistic photograph of {subject}",
    "oil painting": "an oil painting of {subject}",
    "watercolor": "a watercolor painting of {subject}",
    "anime": "{subject} in anime style",
    "cyberpunk": "{subject} in cyberpunk style, neon lights",
    "vintage": "a vintage photograph of {subject}",
    "minimalist": "{subject}, minimalist design",
    "psychedelic": "{subject}, psychedelic art",
    "line art": "a line art drawing of {subject}",
}
SEED_PROMPT = "a {subject}, vibrant colors, high quality fabric swatch"

# --- The morph -----------------------------------------------------------------------------------
MORPH_PROMPT = "a {subject}, vibrant colors, high quality fabric swatch"

# --- Exercise 3: textual inversion vs LoRA, four contexts ----------------------------------------
COMPARE_CONTEXTS = {
    "swatch": "a {subject}, vibrant colors, high quality fabric swatch",
    "dress": "a beautiful dress made of {subject}, fashion photography",
    "vase": "a ceramic vase decorated with {subject}",
    "watercolor": "a watercolor painting of {subject}",
}

# --- Exercise 3a: textual inversion ("{}" becomes the new word) ----------------------------------
PLACEHOLDER_TOKEN = "<african-fabric>"
# Style captions: the token names a look, not an object in the scene.
TI_STYLE_TEMPLATES = [
    "a fabric pattern in the style of {}",
    "a textile in the style of {}",
    "a painting in the style of {}",
    "a close-up photo of a fabric in the style of {}",
    "a swatch of cloth in the style of {}",
    "a rendering in the style of {}",
    "a print in the style of {}",
    "an african fabric in the style of {}",
]
TI_PROGRESS_TEMPLATES = [
    "a fabric pattern in the style of {}",
    "a beautiful dress made of {} african fabric pattern, fashion photography",
    "a ceramic vase decorated with {} african fabric pattern",
    "a painting in the style of {}",
]

# --- Exercise 3b: DreamBooth ---------------------------------------------------------------------
INSTANCE_PROMPT = f"a {IDENTIFIER} {SUBJECT_CLASS}"
CLASS_PROMPT = "a fabric pattern"
LORA_PROGRESS_PROMPTS = [
    INSTANCE_PROMPT,
    f"a beautiful dress made of {IDENTIFIER} {SUBJECT_CLASS}, fashion photography",
    f"a ceramic vase decorated with {IDENTIFIER} {SUBJECT_CLASS}",
    CLASS_PROMPT,  # the class prompt: it should stay generic
]
PROGRESS_SEEDS = [1000, 1001, 1002, 1003]


def every_prompt():
    """Every prompt the exercises and trainers use, with the subject phrase filled in."""
    subject = f"{IDENTIFIER} {SUBJECT_CLASS}"
    templates = [*CONTEXTS.values(), *STYLES.values(), GUIDANCE_PROMPT, SEED_PROMPT, MORPH_PROMPT,
                 *COMPARE_CONTEXTS.values()]
    prompts = [template.format(subject=subject) for template in templates]
    prompts += [template.format(PLACEHOLDER_TOKEN) for template in TI_STYLE_TEMPLATES + TI_PROGRESS_TEMPLATES]
    return prompts + [INSTANCE_PROMPT, CLASS_PROMPT] + LORA_PROGRESS_PROMPTS
