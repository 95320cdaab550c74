"""common/encoded_examples.py: the training examples as the UNet reads them, cached where they never change."""

import pytest
import torch

import exercise3b_train_lora as trainer
from common.encoded_examples import EncodedExamples, encode_prompt

CPU = torch.device("cpu")
CAPTIONS = {"instance": "a sks african fabric pattern", "class": "a fabric pattern"}


def examples_of(pipe, images_by_role, captions_by_role, *, flip=False, cache=True, text_encoder_trains=False,
                empty_prompt_share=None):
    return EncodedExamples(pipe, images_by_role=images_by_role, captions_by_role=captions_by_role, flip=flip,
                           cache=cache, text_encoder_trains=text_encoder_trains, device=CPU, dtype=torch.float32,
                           empty_prompt_share=empty_prompt_share)


@pytest.fixture
def pipe_and_images(tiny_pipeline_dir, instance_dir):
    from common.pipeline import load_pipeline
    from common.training_images import load_training_images

    return (load_pipeline(str(tiny_pipeline_dir), CPU, torch.float32), load_training_images(instance_dir, 32))


def prepared(pipe, images, cache):
    """The tiny pipeline with a UNet LoRA, its examples and the training noise schedule."""
    from diffusers import DDPMScheduler

    from common.lora_training import add_lora

    examples = examples_of(pipe, {"instance": images, "class": images[::-1]}, CAPTIONS, flip=True, cache=cache)
    pipe.unet.requires_grad_(False)
    add_lora({"unet": (pipe.unet, trainer.LORA_TARGETS)}, rank=4, alpha=32, seed=0)
    return examples, DDPMScheduler.from_config(pipe.scheduler.config)


def test_cached_and_uncached_examples_give_the_same_loss(tiny_pipeline_dir, instance_dir):
    from common.pipeline import load_pipeline
    from common.training_images import load_training_images

    losses = []
    for cache in (True, False):
        pipe = load_pipeline(str(tiny_pipeline_dir), CPU, torch.float32)
        examples, scheduler = prepared(pipe, load_training_images(instance_dir, 32), cache)
        with torch.no_grad():
            step = trainer.training_step(pipe.unet, scheduler, examples, 2, torch.Generator().manual_seed(7), True, 1.0)
        losses.append([value.item() for value in step])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_loss_falls_on_a_fixed_batch(pipe_and_images):
    pipe, images = pipe_and_images
    examples, scheduler = prepared(pipe, images, cache=True)
    parameters = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    losses = []
    for _ in range(30):
        total, _, _ = trainer.training_step(pipe.unet, scheduler, examples, 1, torch.Generator().manual_seed(3),
                                            True, 1.0)
        total.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_embeddings_carry_gradients_only_when_the_text_encoder_trains(pipe_and_images):
    from common.lora_training import TEXT_ENCODER_LORA_TARGETS, add_lora

    pipe, images = pipe_and_images
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    _, trainable = add_lora({"text_encoder": (pipe.text_encoder, TEXT_ENCODER_LORA_TARGETS)}, rank=4, alpha=32,
                            seed=0)
    assert trainable and all(name.startswith("text_encoder.") for name in trainable)
    captions = {"instance": CAPTIONS["instance"]}
    frozen = examples_of(pipe, {"instance": images}, captions)
    training = examples_of(pipe, {"instance": images}, captions, text_encoder_trains=True)
    generator = torch.Generator().manual_seed(0)
    assert not frozen.draw("instance", 2, generator)[1].requires_grad
    assert training.draw("instance", 2, generator)[1].requires_grad


def test_empty_prompt_share_captions_that_share_of_instance_images_with_the_empty_prompt(pipe_and_images):
    pipe, images = pipe_and_images
    roles = {"instance": images, "class": images[::-1]}
    with torch.no_grad():
        instance, empty, class_embedding = (encode_prompt(pipe, p, CPU)
                                            for p in (CAPTIONS["instance"], "", CAPTIONS["class"]))
    plain = examples_of(pipe, roles, CAPTIONS, flip=True)
    unset = examples_of(pipe, roles, CAPTIONS, flip=True, empty_prompt_share={"instance": 0.0})
    half = examples_of(pipe, roles, CAPTIONS, flip=True, empty_prompt_share={"instance": 0.5})
    # a share of 0 draws nothing extra: the same images, flips and captions as before
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(5):
        for role in roles:
            assert all(torch.equal(x, y) for x, y in zip(plain.draw(role, 2, a), unset.draw(role, 2, b)))
    generator, emptied = torch.Generator().manual_seed(0), 0
    for _ in range(100):
        _, embeddings = half.draw("instance", 2, generator)
        for embedding in embeddings:
            is_empty = torch.equal(embedding, empty[0])
            assert is_empty or torch.equal(embedding, instance[0])
            emptied += is_empty
        _, class_embeddings = half.draw("class", 2, generator)
        assert all(torch.equal(e, class_embedding[0]) for e in class_embeddings)  # class captions are kept
    assert 70 <= emptied <= 130  # half of 200, give or take 3 standard deviations


def test_each_class_image_is_paired_with_the_prompt_that_drew_it(pipe_and_images):
    """Several --class-prompt values share the class images; each image must train with its own caption."""
    pipe, images = pipe_and_images
    captions = ["a fabric pattern", "a dress made of african fabric pattern"] * (len(images) // 2)
    examples = examples_of(pipe, {"class": images}, {"class": captions})
    _, embeddings = examples.draw("class", 16, torch.Generator().manual_seed(3))
    _, picked = examples.images.draw_with_indices("class", 16, torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.cat([encode_prompt(pipe, captions[i], CPU) for i in picked])
    assert len(set(picked.tolist())) > 2 and {captions[i] for i in picked} == set(captions)
    torch.testing.assert_close(embeddings, expected)
    # uncached (as when the text encoder trains): only the drawn captions are encoded, same pairing
    uncached = examples_of(pipe, {"class": images}, {"class": captions}, cache=False)
    torch.testing.assert_close(uncached.draw("class", 16, torch.Generator().manual_seed(3))[1], expected)
    one = uncached.draw("class", 1, torch.Generator().manual_seed(3))[1]
    torch.testing.assert_close(one, expected[:1])
    with pytest.raises(ValueError, match="captions"):
        examples_of(pipe, {"class": images}, {"class": captions[:3]})
