"""Generic small shapes in repeats: rings, polygons and stars of many sizes and point counts.

The fabric world's eight families have no small pointed shapes, so a decoder
trained on them alone rounds every small point off (the subject's rosettes
came back as discs). These shapes widen that world for the decoder, and give
the rosette detector (micro/rosettes.py) its hard negatives.

The subject itself stays unseen: `random_shape_spec` never draws an
eight-pointed star in orange, and the subject's teal and cream are not among
the palette's colours; so the subject stays as new to the micro model as a
student's own subject is to Stable Diffusion.
"""

import math

import numpy as np

from micro import world


def star_mask(cu, cv, points, outer, inner, hollow=0.0, rotation=0.0):
    """Mask of a star with `points` tips at radius `outer` and notches at radius `inner`, around (0, 0),
    with a hole of radius `hollow`. points=0 draws a disc (a ring with a hole); inner=outer*cos(pi/points)
    draws a regular polygon."""
    radius = np.sqrt(cu ** 2 + cv ** 2)
    if points == 0:
        edge = outer
    else:
        angle = (np.arctan2(cv, cu) - rotation + math.pi / points) % (2 * math.pi / points) - math.pi / points
        # straight edges between tip and notch: the boundary in polar form of a star polygon
        tip, notch = np.array([outer, 0.0]), np.array([inner * math.cos(math.pi / points),
                                                        inner * math.sin(math.pi / points)])
        direction = np.stack([np.cos(np.abs(angle)), np.sin(np.abs(angle))], -1)
        edge_vector = notch - tip
        normal = np.array([edge_vector[1], -edge_vector[0]])
        edge = (tip @ normal) / np.maximum(direction @ normal, 1e-6)
    return (radius < edge) & (radius >= hollow)


def shape_texture(spec, size, rng, background_rgb=None):
    """[size, size, 3] float image: the spec's shape in every cell of a square lattice, optionally with
    accent dots where four cells meet (as the subject has)."""
    v, u = np.mgrid[0:size, 0:size] / size
    offset_u, offset_v = rng.uniform(0, 1, 2)
    repeats = spec["repeats"]
    cu, cv = ((u + offset_u) * repeats) % 1 - 0.5, ((v + offset_v) * repeats) % 1 - 0.5
    mask = star_mask(cu, cv, spec["points"], spec["outer"], spec["inner"], spec["hollow"], spec["rotation"])
    ground, shape, accent = (np.array(world.PALETTE[c] if isinstance(c, str) else c, np.float32) / 255
                             for c in spec["colours"])
    image = np.where(mask[..., None], shape, ground if background_rgb is None else background_rgb)
    if spec["accent"]:
        du, dv = ((u + offset_u) * repeats + 0.5) % 1 - 0.5, ((v + offset_v) * repeats + 0.5) % 1 - 0.5
        image = np.where((du ** 2 + dv ** 2 < spec["accent"] ** 2)[..., None], accent, image)
    return image.astype(np.float32)


def random_shape_spec(rng, points=None, colours=None, star_share=0.8, eight_share=0.75):
    """A random shape, always upright as prints are: stars (`star_share`; `eight_share` of them
    eight-pointed, the rest of 4-12 points), regular polygons of 3-8 sides and discs (the rest, half
    each), filled or hollow, 2.5-6 repeats
    across, in three palette colours (ground, shape, accent). Never the subject: an eight-pointed star
    is never orange, and teal and cream are not palette colours."""
    kind = rng.choice(["star", "polygon", "disc"], p=[star_share, (1 - star_share) / 2, (1 - star_share) / 2])
    if points is None and kind == "star":
        points = 8 if rng.random() < eight_share else int(rng.choice([4, 5, 6, 7, 9, 10, 11, 12]))
    elif points is None:
        points = int(rng.integers(3, 9)) if kind == "polygon" else 0
    outer = rng.uniform(0.25, 0.45)
    if kind == "polygon":
        inner = outer * math.cos(math.pi / points)
    elif kind == "star":
        inner = outer * rng.uniform(0.55, 0.85)
    else:
        inner = outer
    while colours is None:
        picked = tuple(world.COLOURS[i] for i in rng.choice(len(world.COLOURS), 3, replace=False))
        if not (points == 8 and picked[1] == "orange"):
            colours = picked
    return {"points": points, "outer": float(outer), "inner": float(inner),
            "hollow": float(rng.uniform(0.2, 0.4) * outer) if rng.random() < 0.6 else 0.0, "rotation": 0.0,
            "repeats": float(rng.uniform(2.5, 6.0)), "colours": colours,
            "accent": float(rng.uniform(0.06, 0.14)) if rng.random() < 0.5 else 0.0}


def render_shapes(spec, size=64, seed=0, context="swatch", style="plain", supersample=4):
    """uint8 [size, size, 3]: a shape spec as fabric in one of the world's contexts and styles, drawn
    `supersample` times larger and scaled down, so that small shapes have soft edges, as the subject's
    training images do (drawn at 512 px, read at 64)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    picture = world.compose(shape_texture(spec, size * supersample, rng), context, style, rng)
    if supersample == 1:
        return picture
    return np.asarray(Image.fromarray(picture).resize((size, size), Image.Resampling.BOX))


def random_shape_picture(rng, size=64, **shares):
    """(uint8 picture, spec): a random shape (`shares` as random_shape_spec takes them), half the time as
    a swatch, else in a random context and style."""
    spec = random_shape_spec(rng, **shares)
    context, style = ("swatch", "plain") if rng.random() < 0.5 else (
        world.CONTEXTS[rng.integers(len(world.CONTEXTS))], world.STYLES[rng.integers(len(world.STYLES))])
    return render_shapes(spec, size, int(rng.integers(2 ** 31)), context, style), {**spec, "context": context,
                                                                                   "style": style}
