"""A procedural world of captioned fabric images, the micro model's whole universe.

Every image is a fabric *pattern family* in two *colours*, shown in a
*context* (a flat swatch, a dress, a wall, a vase ...) and a *style* (oil
painting, watercolor, line art ...), with a caption in the course's phrasing.
Rendering is resolution-free (coordinates in [0, 1]), so the same spec draws a
64 px training image or a 512 px picture for training_images/.

The DreamBooth subject is a ninth family that the pretraining corpus never
contains: eight-pointed stars with dotted centres in teal and orange on cream.
"""

import math

import numpy as np

FAMILIES = ["stripes", "checks", "dots", "zigzag", "diamonds", "medallions", "kente", "mudcloth"]
FAMILY_WORDS = {"stripes": "striped", "checks": "checkered", "dots": "polka dot", "zigzag": "zigzag",
                "diamonds": "diamond", "medallions": "wax print medallion", "kente": "kente",
                "mudcloth": "mudcloth"}
PALETTE = {
    "red": (200, 30, 40), "orange": (240, 130, 20), "yellow": (245, 210, 40), "green": (40, 150, 60),
    "blue": (30, 70, 190), "purple": (120, 40, 150), "pink": (240, 120, 170), "brown": (110, 65, 30),
    "black": (20, 20, 20), "white": (245, 245, 240),
}
COLOURS = list(PALETTE)
CONTEXTS = ["swatch", "dress", "wallpaper", "handbag", "vase", "basket", "cushion"]
STYLES = ["plain", "photorealistic", "oil painting", "watercolor", "anime", "cyberpunk", "vintage", "minimalist",
          "psychedelic", "line art"]
STAR_REPEATS = 3.5
SUBJECT = {"family": "stars", "colours": ((20, 140, 140), (240, 120, 20)), "background": (240, 228, 200)}


# --- pattern families: functions of (u, v) in [0, 1)^2 returning a mask of the second colour ---

def _rotate(u, v, angle):
    c, s = math.cos(angle), math.sin(angle)
    return c * u - s * v, s * u + c * v


def _pattern_mask(family, u, v, rng):
    k = rng.uniform(3.0, 6.0)  # repeats across the image
    if family == "stripes":
        a, b = _rotate(u, v, rng.choice([0, math.pi / 2, math.pi / 4]))
        return (a * k * 1.5) % 1 < rng.uniform(0.35, 0.6)
    if family == "checks":
        return (np.floor(u * k) + np.floor(v * k)) % 2 == 1
    if family == "dots":
        cu, cv = (u * k) % 1 - 0.5, (v * k) % 1 - 0.5
        return cu ** 2 + cv ** 2 < rng.uniform(0.04, 0.09)
    if family == "zigzag":
        tri = np.abs((u * k) % 1 - 0.5)
        return ((v * k * 0.8 + tri) % 1) < 0.5
    if family == "diamonds":
        return np.abs((u * k) % 1 - 0.5) + np.abs((v * k) % 1 - 0.5) < 0.3
    if family == "medallions":
        k = k * 0.6
        d = np.sqrt(((u * k) % 1 - 0.5) ** 2 + ((v * k) % 1 - 0.5) ** 2)
        return (np.floor(d * 8) % 2 == 0) & (d < 0.5)
    if family == "kente":
        k = max(2.0, k * 0.6)
        block = (np.floor(u * k) + np.floor(v * k)) % 2
        fine = np.where(block == 0, (u * k * 6) % 1 < 0.5, (v * k * 6) % 1 < 0.5)
        return fine
    if family == "mudcloth":
        cu, cv = (u * k) % 1, (v * k) % 1
        cross = (np.abs(cu - cv) < 0.08) | (np.abs(cu + cv - 1) < 0.08)
        dash = (np.abs(cv - 0.5) < 0.06) & (cu > 0.15) & (cu < 0.85)
        return np.where((np.floor(v * k) % 2) == 0, cross, dash) & (cu > 0.1) & (cu < 0.9)
    if family == "stars":  # the subject: an eight-pointed star with a hollow centre, in every cell
        k = STAR_REPEATS
        cu, cv = (u * k) % 1 - 0.5, (v * k) % 1 - 0.5
        square = np.maximum(np.abs(cu), np.abs(cv)) < 0.28
        a, b = _rotate(cu, cv, math.pi / 4)
        turned = np.maximum(np.abs(a), np.abs(b)) < 0.28
        return (square | turned) & ~(cu ** 2 + cv ** 2 < 0.012)
    raise ValueError(f"unknown family {family}")


def fabric_texture(family, colours, size, rng, background=None):
    """[size, size, 3] float image of a fabric family in (first, second) colours."""
    v, u = np.mgrid[0:size, 0:size] / size
    offset_u, offset_v = rng.uniform(0, 1, 2)
    mask = _pattern_mask(family, u + offset_u, v + offset_v, rng)
    first, second = (np.array(c, dtype=np.float32) / 255 for c in colours)
    image = np.where(mask[..., None], second, first if background is None else np.array(background) / 255)
    if family == "stars":  # the subject's teal dots where four cells meet
        cu, cv = ((u + offset_u) * STAR_REPEATS + 0.5) % 1 - 0.5, ((v + offset_v) * STAR_REPEATS + 0.5) % 1 - 0.5
        image = np.where((cu ** 2 + cv ** 2 < 0.015)[..., None], first, image)
    return image.astype(np.float32)


# --- contexts: where the fabric appears ---

def _ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 < 1


def context_mask(context, size):
    """(mask of the fabric, background image) for a context."""
    v, u = np.mgrid[0:size, 0:size] / size
    background = np.ones((size, size, 3), np.float32) * np.array([0.86, 0.84, 0.80], np.float32)
    if context == "swatch":
        return np.ones((size, size), bool), background
    if context == "dress":
        bodice = (np.abs(u - 0.5) < 0.12) & (v > 0.12) & (v < 0.42)
        skirt = (v >= 0.42) & (v < 0.92) & (np.abs(u - 0.5) < 0.12 + (v - 0.42) * 0.55)
        straps = (np.abs(np.abs(u - 0.5) - 0.09) < 0.025) & (v > 0.04) & (v <= 0.12)
        return bodice | skirt | straps, background
    if context == "wallpaper":
        floor = v > 0.72
        background = np.where(floor[..., None], np.array([0.45, 0.30, 0.18], np.float32), background)
        sofa = (np.abs(u - 0.5) < 0.3) & (v > 0.55) & (v < 0.8)
        background = np.where(sofa[..., None], np.array([0.25, 0.25, 0.3], np.float32), background)
        return ~floor & ~sofa, background
    if context == "handbag":
        body = (np.abs(u - 0.5) < 0.32) & (v > 0.42) & (v < 0.85)
        handle = np.abs(np.sqrt((u - 0.5) ** 2 + ((v - 0.42) / 0.9) ** 2) - 0.2) < 0.03
        handle &= v < 0.42
        background = np.where(handle[..., None], np.array([0.3, 0.2, 0.1], np.float32), background)
        return body, background
    if context == "vase":
        body = _ellipse(u, v, 0.5, 0.62, 0.3, 0.28)
        neck = (np.abs(u - 0.5) < 0.1) & (v > 0.15) & (v < 0.45)
        lip = (np.abs(u - 0.5) < 0.15) & (v > 0.12) & (v < 0.17)
        return body | neck | lip, background
    if context == "basket":
        bowl = (v > 0.4) & (v < 0.88) & (np.abs(u - 0.5) < 0.4 - (v - 0.4) * 0.3)
        rim = (v > 0.36) & (v <= 0.4) & (np.abs(u - 0.5) < 0.42)
        background = np.where(rim[..., None], np.array([0.55, 0.38, 0.2], np.float32), background)
        return bowl, background
    if context == "cushion":
        d = np.maximum(np.abs(u - 0.5), np.abs(v - 0.5))
        return d < 0.33, background
    raise ValueError(f"unknown context {context}")


def _blur(image, passes=1):
    for _ in range(passes):
        image = (image + np.roll(image, 1, 0) + np.roll(image, -1, 0) + np.roll(image, 1, 1)
                 + np.roll(image, -1, 1)) / 5
    return image


def _edges(image):
    grey = image.mean(-1)
    return (np.abs(np.diff(grey, axis=0, append=grey[-1:])) + np.abs(np.diff(grey, axis=1, append=grey[:, -1:]))) > 0.08


def apply_style(image, style, rng):
    size = image.shape[0]
    scale = max(1, size // 64)
    if style in ("plain",):
        return image
    if style == "photorealistic":
        v = np.linspace(1.05, 0.85, size)[:, None, None]
        return np.clip(image * v + rng.normal(0, 0.02, image.shape), 0, 1)
    if style == "oil painting":
        image = np.round(_blur(image, scale) * 6) / 6
        return np.clip(image + rng.normal(0, 0.05, (size, size, 1)) * 0.8, 0, 1)
    if style == "watercolor":
        image = 0.55 * _blur(image, 2 * scale) + 0.45
        return np.clip(image + rng.normal(0, 0.015, (size, size, 1)), 0, 1)
    if style == "anime":
        flat = np.round(image * 3) / 3
        return np.where(_edges(image)[..., None], 0.05, flat)
    if style == "cyberpunk":
        neon = np.stack([image[..., 0] * 0.9 + 0.3 * image[..., 2], image[..., 1] * 0.3,
                         image[..., 2] * 0.8 + 0.4 * image[..., 0]], -1) * 0.7
        glow = _edges(image)[..., None] * np.array([0.1, 0.95, 0.95])
        return np.clip(neon + glow, 0, 1)
    if style == "vintage":
        grey = image.mean(-1, keepdims=True)
        sepia = grey * np.array([1.0, 0.85, 0.6]) + np.array([0.08, 0.05, 0.0])
        v, u = np.mgrid[0:size, 0:size] / size
        vignette = 1 - 0.6 * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
        return np.clip(sepia * vignette[..., None], 0, 1)
    if style == "minimalist":
        grey = image.mean(-1, keepdims=True)
        return np.clip(0.35 * image + 0.65 * np.round(grey * 2) / 2 * 0.9 + 0.08, 0, 1)
    if style == "psychedelic":
        v, u = np.mgrid[0:size, 0:size] / size
        shift = np.stack([np.sin(u * 9 + v * 5), np.sin(u * 6 - v * 8 + 2), np.sin(v * 9 + 4)], -1) * 0.5 + 0.5
        return np.clip(np.abs(image - shift) * 1.3, 0, 1)
    if style == "line art":
        return np.where(_edges(image)[..., None], 0.05, 0.97) * np.ones(3)
    raise ValueError(f"unknown style {style}")


def render(spec, size=64, seed=0):
    """uint8 [size, size, 3] image of a spec dict (family, colours, context, style)."""
    rng = np.random.default_rng(seed)
    if spec["family"] == "stars":
        texture = fabric_texture("stars", SUBJECT["colours"], size, rng, background=SUBJECT["background"])
    else:
        texture = fabric_texture(spec["family"], [PALETTE[c] for c in spec["colours"]], size, rng)
    return compose(texture, spec["context"], spec["style"], rng)


def compose(texture, context, style, rng):
    """uint8 picture of a [size, size, 3] fabric texture shown in a context and drawn in a style."""
    size = texture.shape[0]
    mask, background = context_mask(context, size)
    if context == "basket":  # woven: darker weave lines over the fabric
        v, u = np.mgrid[0:size, 0:size] / size
        texture = texture * (1 - 0.25 * (((u * 24) % 1 < 0.15) | ((v * 24) % 1 < 0.15)))[..., None]
    image = np.where(mask[..., None], texture, background)
    image = apply_style(image, style, rng)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


# --- captions in the course's phrasing ---

CONTEXT_PHRASES = {
    "swatch": ["a {p}", "a {p}, vibrant colors, high quality fabric swatch", "a swatch of cloth with {p}",
               "a close-up photo of {p}", "a textile with {p}", "a print of {p}"],
    "dress": ["a dress made of {p}", "a beautiful dress made of {p}, fashion photography"],
    "wallpaper": ["{p} as wallpaper in a modern living room", "a living room with {p} wallpaper"],
    "handbag": ["a handbag made of {p}", "a handbag made of {p}, product photography"],
    "vase": ["a ceramic vase decorated with {p}", "a vase with {p}"],
    "basket": ["a woven basket with {p}", "a basket decorated with {p}"],
    "cushion": ["a cushion made of {p}", "a cushion with {p}"],
}
STYLE_PHRASES = {
    "plain": ["{x}"],
    "photorealistic": ["a photorealistic photograph of {x}", "{x}, photorealistic"],
    "oil painting": ["an oil painting of {x}", "a painting of {x}"],
    "watercolor": ["a watercolor painting of {x}"],
    "anime": ["{x} in anime style"],
    "cyberpunk": ["{x} in cyberpunk style, neon lights", "a cyberpunk city scene with {x}, neon lights"],
    "vintage": ["a vintage photograph of {x}"],
    "minimalist": ["{x}, minimalist design", "abstract geometric art inspired by {x}"],
    "psychedelic": ["{x}, psychedelic art"],
    "line art": ["a line art drawing of {x}", "a rendering of {x} in line art"],
}


def pattern_phrase(spec, rng):
    """How much of the spec the caption names: sometimes all, sometimes only 'a fabric pattern'."""
    family = FAMILY_WORDS[spec["family"]]
    first, second = spec["colours"]
    choice = rng.random()
    if choice < 0.45:
        return f"{first} and {second} {family} fabric pattern"
    if choice < 0.65:
        return f"{first} and {second} {family} african fabric pattern"
    if choice < 0.8:
        return f"{family} fabric pattern"
    if choice < 0.9:
        return f"{first} and {second} fabric pattern"
    return "african fabric pattern" if rng.random() < 0.5 else "fabric pattern"


def caption(spec, rng, phrase=None):
    """A caption for `spec`; `phrase` replaces the pattern words (e.g. "sks african fabric pattern")."""
    phrase = phrase or pattern_phrase(spec, rng)
    context = str(rng.choice(CONTEXT_PHRASES[spec["context"]]))
    style = str(rng.choice(STYLE_PHRASES[spec["style"]]))
    if "city scene" in style or "inspired by" in style:  # these name the fabric, not a context
        return style.format(x=phrase)
    return style.format(x=context.format(p=phrase))


def held_out(spec):
    """About one (family, context, style) combination in seven never appears in pretraining,
    so the base model can be measured on combinations it has to compose itself."""
    return (FAMILIES.index(spec["family"]) + CONTEXTS.index(spec["context"])
            + STYLES.index(spec["style"])) % 7 == 0


def random_spec(rng, held_out_only=False):
    """A random spec from the pretraining combinations (or, with held_out_only, from the held-out ones)."""
    while True:
        first, second = rng.choice(len(COLOURS), 2, replace=False)
        spec = {"family": FAMILIES[rng.integers(len(FAMILIES))], "colours": (COLOURS[first], COLOURS[second]),
                "context": CONTEXTS[rng.integers(len(CONTEXTS))], "style": STYLES[rng.integers(len(STYLES))]}
        if held_out(spec) == held_out_only:
            return spec


def sample(count, seed):
    """`count` (uint8 image, caption, spec) triples, the same for the same seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        spec = random_spec(rng)
        out.append((render(spec, 64, int(rng.integers(2 ** 31))), caption(spec, rng), spec))
    return out
