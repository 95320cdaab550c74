"""common/clip_dino.py and common/paper_evaluation.py: CLIP and DINO offline, and the paper's measures with
them, on tiny random models built here (no download)."""

import numpy as np
import pytest
import torch
from PIL import Image

from common import paper_evaluation
from common.clip_dino import (clip_image_embeddings, clip_text_embeddings, dino_embeddings, load_clip,
                              load_dino)
from common.errors import UserError
from common.paper_metrics import matched_cosine
from tests.helpers import write_tiny_clip, write_tiny_dino


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def tiny_dino_dir(tmp_path_factory):
    return write_tiny_dino(tmp_path_factory.mktemp("tiny_dino"))


def noise_image(seed, size=40):
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


def test_a_model_missing_from_the_cache_is_one_line_for_clip_and_a_note_for_dino(tmp_path, capsys):
    with pytest.raises(UserError, match="hf download .*--clip-model"):
        load_clip(str(tmp_path / "no_clip_here"), "cpu")
    assert load_dino(str(tmp_path / "no_dino_here"), "cpu") is None
    assert "DINO column is left out" in capsys.readouterr().out


def test_embeddings_are_one_row_per_input_and_do_not_depend_on_the_batch(tiny_clip_dir, tiny_dino_dir):
    clip, dino = load_clip(str(tiny_clip_dir), "cpu"), load_dino(str(tiny_dino_dir), "cpu")
    images = [noise_image(seed) for seed in range(5)]
    together = clip_image_embeddings(clip, images)
    assert together.shape == (5, 16)
    torch.testing.assert_close(clip_image_embeddings(clip, images, batch_size=2), together, rtol=1e-4, atol=1e-5)
    assert clip_text_embeddings(clip, ["a red fabric", "a dress", "x"]).shape == (3, 16)
    assert dino_embeddings(dino, images).shape == (5, 32)
    # other pictures, other embeddings: the models read the pixels
    assert not torch.allclose(together[0], together[1])


def test_identical_pictures_score_one_on_subject_fidelity_and_pres_and_zero_diversity(tiny_clip_dir, tiny_dino_dir):
    clip, dino = load_clip(str(tiny_clip_dir), "cpu"), load_dino(str(tiny_dino_dir), "cpu")
    subject = noise_image(0)
    prompts = ["a dress made of african fabric pattern", "a vase"] * 2
    scores = paper_evaluation.embedding_scores(clip, dino, [subject] * 4, prompts, 2, [subject], [subject] * 3)
    assert scores["clip_i"] == scores["dino"] == scores["pres"] == pytest.approx(1.0, abs=1e-3)
    assert scores["div"] == pytest.approx(0.0, abs=1e-3)
    expected = matched_cosine(clip_image_embeddings(clip, [subject] * 4), clip_text_embeddings(clip, prompts))
    assert scores["clip_t"] == pytest.approx(expected, abs=1e-3)
    # other pictures of the prompts: fidelity falls below 1 and diversity rises above 0
    others = [noise_image(seed) for seed in range(1, 5)]
    varied = paper_evaluation.embedding_scores(clip, None, others, prompts, 2, others[:1], [subject])
    assert varied["clip_i"] < 0.999 and varied["div"] > 0.001 and "dino" not in varied
    bounds = paper_evaluation.real_bounds(clip, dino, [subject, subject])
    assert bounds["clip_i"] == bounds["dino"] == pytest.approx(1.0, abs=1e-3)


def test_the_prompt_set_has_the_papers_three_kinds_in_the_courses_words():
    items = paper_evaluation.prompt_set()
    kinds = [kind for kind, _ in items]
    assert kinds.count("context") == 9 and kinds.count("colour") == 6 and kinds.count("style") == 8
    assert all("{subject}" in template for _, template in items)
    assert len({template for _, template in items}) == len(items)  # no prompt drawn twice
