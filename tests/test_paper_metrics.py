"""common/paper_metrics.py: each measure on inputs whose answer is known."""

import pytest
import torch

from common.paper_metrics import (accuracy, colour_histogram, colour_similarity, diversity, matched_cosine,
                                  mean_pairwise_cosine, real_vs_real)


def test_subject_fidelity_is_one_for_the_same_pictures_and_zero_for_orthogonal_ones():
    a = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # the same direction, other lengths
    b = torch.tensor([[0.0, 3.0, 0.0]])
    assert mean_pairwise_cosine(a, a) == pytest.approx(1.0)
    assert mean_pairwise_cosine(a, b) == pytest.approx(0.0)
    assert mean_pairwise_cosine(torch.cat([a, b]), a) == pytest.approx(2 / 3)  # two of three rows match


def test_real_vs_real_leaves_out_each_image_against_itself():
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert real_vs_real(real) == pytest.approx(0.0)  # the diagonal's ones would have given 0.5
    assert real_vs_real(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        real_vs_real(real[:1])


def test_diversity_is_zero_for_identical_seeds_and_averages_over_prompts():
    same = torch.ones(4, 5)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # 1 - cos = 2
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 1 - cos = 1
    assert diversity([same]) == pytest.approx(0.0, abs=1e-6)
    assert diversity([opposite, orthogonal]) == pytest.approx(1.5)
    assert diversity([orthogonal, torch.ones(1, 2)]) == pytest.approx(1.0)  # a single picture has no pairs
    with pytest.raises(ValueError):
        diversity([torch.ones(1, 2)])


def test_accuracy_counts_the_asked_labels():
    assert accuracy([2, 0, 1, 1], [2, 0, 0, 1]) == 0.75
    assert accuracy(torch.tensor([3]), torch.tensor([3])) == 1.0


def test_prompt_fidelity_pairs_each_picture_with_its_own_prompt_only():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert matched_cosine(images, torch.tensor([[3.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)
    assert matched_cosine(images, torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(0.0)  # swapped prompts
    assert matched_cosine(images, torch.tensor([[1.0, 1.0], [0.0, 1.0]])) == pytest.approx((2 ** -0.5 + 1) / 2)
    with pytest.raises(ValueError):
        matched_cosine(images, images[:1])


def test_colour_similarity_is_one_for_the_same_colours_and_zero_for_none_in_common():
    from PIL import Image

    red, blue = Image.new("RGB", (8, 8), (250, 10, 10)), Image.new("RGB", (8, 8), (10, 10, 250))
    half = Image.new("RGB", (8, 8), (250, 10, 10))
    half.paste((10, 10, 250), (0, 0, 8, 4))
    assert colour_histogram(red).sum() == pytest.approx(1.0) and colour_histogram(red).max() == 1.0
    assert colour_similarity([red], [red]) == 1.0 and colour_similarity([blue], [red]) == 0.0
    assert colour_similarity([half], [red]) == pytest.approx(0.5)
    assert colour_similarity([red, blue], [red, blue]) == pytest.approx(0.5)  # each half of the reference's colours
