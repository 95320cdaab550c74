"""micro/rosettes.py and micro/shapes.py: the judge-free count of the subject's rosettes, and v2's
warm start (the new 16x16 attention starts as nothing, so v2 first draws exactly as v1)."""

import math

import numpy as np
import pytest
import torch

from micro import rosettes, shapes, world


def test_the_subject_is_found_where_it_is_and_its_look_alikes_are_not():
    picture, centres = rosettes.subject_swatch(seed=123)
    found = rosettes.find_rosettes(picture[None])[0]
    inside = [(x, y) for x, y in centres if 8.5 <= x < 54.5 and 8.5 <= y < 54.5]
    assert len(found) >= len(inside) > 0
    assert rosettes.recall([found], [centres]) == 1.0
    # the same layout, colours and hollow centres, but discs, or six and ten points: no rosette
    rng = np.random.default_rng(0)
    for points in (0, 6, 10):
        look_alike = rosettes._subject_coloured({"points": points, "outer": 0.396, "inner": 0.3, "hollow": 0.11},
                                                True, rng, 64)
        assert rosettes.count_rosettes(look_alike[None]) == [0], points


def test_a_picture_shows_the_pattern_only_with_two_rosettes():
    picture, _ = rosettes.subject_swatch(seed=5)
    cream = np.zeros_like(picture) + np.array(world.SUBJECT["background"], np.uint8)
    one = cream.copy()
    found = rosettes.find_rosettes(picture[None])[0]
    x, y = int(round(found[0][0])), int(round(found[0][1]))
    one[y - 9:y + 10, x - 9:x + 10] = picture[y - 9:y + 10, x - 9:x + 10]  # a single rosette on cream
    assert rosettes.count_rosettes(np.stack([one, cream])) == [1, 0]
    assert rosettes.shows_subject_pattern(np.stack([picture, one, cream])) == [True, False, False]


def test_star_mask_draws_the_subjects_star_exactly():
    v, u = np.mgrid[0:200, 0:200] / 200 - 0.5
    star = shapes.star_mask(u, v, 8, 0.28 * math.sqrt(2), 0.303, math.sqrt(0.012))
    square = np.maximum(abs(u), abs(v)) < 0.28
    a, b = world._rotate(u, v, math.pi / 4)
    subject = (square | (np.maximum(abs(a), abs(b)) < 0.28)) & ~(u ** 2 + v ** 2 < 0.012)
    assert (star == subject).mean() > 0.999


def test_generic_shapes_never_draw_the_subject():
    rng = np.random.default_rng(0)
    specs = [shapes.random_shape_spec(rng) for _ in range(3000)]
    assert any(s["points"] == 8 for s in specs)  # eight-pointed stars, in other colours
    assert not any(s["points"] == 8 and s["colours"][1] == "orange" for s in specs)
    assert not any(c not in world.COLOURS for s in specs for c in s["colours"])  # no teal, no cream


def test_v2_unet_starts_as_v1_and_adds_attention_at_16x16(tmp_path):
    import argparse

    from micro import pretrain

    channels, width = (16, 16, 32), 32
    v1 = pretrain.make_unet(channels, width)
    args = argparse.Namespace(from_model=None, work_dir=tmp_path, unet_channels=channels, text_width=width,
                              text_layers=1)

    class StubTokenizer:
        def get_vocab(self):
            return {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2}

    text_encoder = pretrain.make_text_encoder(StubTokenizer(), width, 1)
    pretrain.save_final(tmp_path / "unet", {f"0.{k}": v for k, v in v1.state_dict().items()}
                        | {f"1.{k}": v for k, v in text_encoder.state_dict().items()})
    v2, _ = pretrain.warm_started_unet16(args, StubTokenizer(), torch.device("cpu"))
    assert v2.down_blocks[0].attentions[0].transformer_blocks[0].only_cross_attention
    latents, timesteps = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    prompt = torch.randn(2, 7, width)
    with torch.no_grad():
        assert torch.equal(v1(latents, timesteps, prompt).sample, v2(latents, timesteps, prompt).sample)
    # the new attention is trained from there: once its output projection moves, the output moves
    with torch.no_grad():
        v2.down_blocks[0].attentions[0].proj_out.weight.normal_()
        assert not torch.allclose(v1(latents, timesteps, prompt).sample, v2(latents, timesteps, prompt).sample)


def test_attention_grown_at_16x16_on_32x32_latents_starts_as_the_model_it_came_from():
    from micro import pretrain

    channels, width = (16, 32, 32, 32), 32
    torch.manual_seed(0)
    conv_only = pretrain.make_unet(channels, width, pretrain.UNET32_CONV_BLOCKS, latent_size=32)
    with torch.no_grad():  # as if trained: no weight at its initial value
        for parameter in conv_only.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    grown = pretrain.with_new_attention(conv_only, pretrain.make_unet(channels, width, pretrain.UNET32_BLOCKS,
                                                                      latent_size=32))
    assert grown.down_blocks[1].attentions[0].transformer_blocks[0].only_cross_attention
    latents, timesteps, prompt = torch.randn(2, 4, 32, 32), torch.tensor([10, 700]), torch.randn(2, 7, width)
    with torch.no_grad():
        assert torch.equal(conv_only(latents, timesteps, prompt).sample, grown(latents, timesteps, prompt).sample)
    # the other way round, attention would be dropped: refused, not half loaded
    with pytest.raises(RuntimeError, match="beyond new attention"):
        pretrain.with_new_attention(grown, pretrain.make_unet(channels, width, pretrain.UNET32_CONV_BLOCKS,
                                                              latent_size=32))


def test_widened_vae_keeps_v1s_latents_exactly_and_grows_a_wider_decoder():
    from micro import pretrain

    torch.manual_seed(3)
    v1 = pretrain.make_vae()
    with torch.no_grad():  # v1 as if trained: no weight at its initial value
        for parameter in v1.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    wide = pretrain.freeze_encoder(pretrain.widened_vae(v1, 2))
    assert wide.config.block_out_channels == (64, 128, 128)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        old, new = v1.encode(images).latent_dist, wide.encode(images).latent_dist
        # the same latents the UNet learned from, up to float summation order
        assert torch.allclose(old.mean, new.mean, atol=1e-5 * old.mean.abs().max())
        assert torch.allclose(old.logvar, new.logvar, atol=1e-5 * old.logvar.abs().max())
        decoded = v1.decode(old.mean).sample
        assert torch.allclose(decoded, wide.decode(old.mean).sample, atol=1e-5 * decoded.abs().max())
    # decoder-only training reaches the new channels (no zero saddle) and leaves the encoder as it was
    loss = (wide.decode(old.mean).sample - images).abs().mean()
    loss.backward()
    new_channels = wide.decoder.conv_out.weight.grad[:, 32:]
    assert new_channels.abs().max() > 0
    assert all(p.grad is None for p in wide.encoder.parameters())
