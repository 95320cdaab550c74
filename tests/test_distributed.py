"""Exercise 3b under `accelerate launch` with 2 CPU processes (gloo): Accelerate averages the gradients.

After one update from the same start, AdamW moves each weight by
lr * g / (|g| + eps), where g is the clipped gradient. Computing g here by
hand from both processes' batches (each process draws with seed + its rank)
predicts the adapter the two processes must save; rank 0's gradient alone
predicts a different one.

Where |g| is near eps (1e-8), that step turns a last-bit difference in g (the
order gloo or another CPU's kernels sum in) into a visible difference in the
weight, and where the two processes' gradients nearly cancel, the sign of the
average itself depends on that order. So weights are compared only where the
averaged gradient is far above eps: there the step is lr * sign(g) to within
lr * eps / |g|, whatever the summation order.
"""

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

import exercise3b_train_lora as trainer
from common.base_model import resolve_training_defaults
from common.identifier_embeddings import IDENTIFIER_FILE
from tests.helpers import REPO
from tests.helpers import train_args


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Gradients this far above AdamW's eps give steps that summation order cannot change.
FAR_ABOVE_EPS = 1e-5


def trainable_parameters(pipe, args):
    from common.identifier_embeddings import attach, identifier_token_ids
    from common.lora_training import TEXT_ENCODER_LORA_TARGETS, add_lora

    models = {"unet": (pipe.unet, args.lora_targets)}
    if args.train_text_encoder:
        models["text_encoder"] = (pipe.text_encoder, TEXT_ENCODER_LORA_TARGETS)
    _, trainable = add_lora(models, rank=args.rank, alpha=args.lora_alpha, seed=args.seed)
    if args.train_identifier:
        identifier = attach(pipe.text_encoder, identifier_token_ids(pipe.tokenizer, args.identifier))
        trainable[trainer.IDENTIFIER_PARAMETER] = identifier.vectors
    return trainable


def predicted_adapter(args, gradients_of_ranks, tiny_pipeline_dir):
    from common.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    trainable = trainable_parameters(pipe, args)
    mean = {name: sum(g[name] for g in gradients_of_ranks) / len(gradients_of_ranks) for name in trainable}
    norm = torch.sqrt(sum((g ** 2).sum() for g in mean.values()))
    clip = min(1.0, 1.0 / (norm.item() + 1e-6))
    eps = 1e-8
    predicted, comparable = {}, {}
    for name, parameter in trainable.items():
        # the identifier's vectors train at their own learning rate, without weight decay
        lr, decay = ((args.identifier_learning_rate, 0.0) if name == trainer.IDENTIFIER_PARAMETER
                     else (args.learning_rate, 1e-2))
        step = mean[name] * clip
        key = name.replace(".default", "")
        predicted[key] = parameter.detach() * (1 - lr * decay) - lr * step / (step.abs() + eps)
        # an exact zero (A's gradient while B is still zero) is exact in any summation order too
        comparable[key] = (step.abs() > FAR_ABOVE_EPS) | (step == 0)
    return predicted, comparable


def gradients_per_rank(args, tiny_pipeline_dir, instance_dir, ranks):
    from diffusers import DDPMScheduler

    from common.class_images import class_image_folder, ensure_class_images
    from common.encoded_examples import EncodedExamples
    from common.pipeline import load_pipeline
    from common.training_images import load_training_images

    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    images = load_training_images(instance_dir, args.resolution)
    (class_prompt,) = args.class_prompt
    folder = class_image_folder(args.class_dir, str(tiny_pipeline_dir), class_prompt, args.resolution,
                                steps=args.steps, guidance=args.guidance)
    classes = ensure_class_images(pipe, folder, class_prompt, args.num_class_images, args.resolution,
                                  steps=args.steps, guidance=args.guidance)  # drawn by the run: read back
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    examples = EncodedExamples(pipe, images_by_role={"instance": images, "class": classes},
                               captions_by_role={"instance": args.instance_prompt, "class": class_prompt},
                               flip=args.flip, cache=args.cache,
                               text_encoder_trains=args.train_text_encoder or args.train_identifier,
                               device=torch.device("cpu"), dtype=torch.float32,
                               empty_prompt_share={"instance": args.proportion_empty_prompts})
    trainable = trainable_parameters(pipe, args)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    gradients = []
    for rank in ranks:
        total, _, _ = trainer.training_step(pipe.unet, noise_scheduler, examples, args.train_batch_size,
                                            torch.Generator().manual_seed(args.seed + rank), True,
                                            args.prior_loss_weight)
        total.backward()
        gradients.append({name: p.grad.clone() for name, p in trainable.items()})
        for p in trainable.values():
            p.grad = None
    return gradients


def test_two_cpu_processes_average_gradients(tiny_pipeline_dir, instance_dir, tmp_path):
    # The text encoder and the identifier's embeddings train too (their gradients must be
    # averaged as well), and a progress grid is drawn while the models sit inside Accelerate's wrappers.
    argv = [str(a) for a in train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 1,
                                       "--train-text-encoder", "--train-identifier", "--progress-every", 1)]
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
               "exercise3b_train_lora.py", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1  # only the main process writes

    saved = {key.removeprefix("base_model.model."): value
             for key, value in load_file(str(tmp_path / "lora" / "adapter_model.safetensors")).items()}
    saved.update({"text_encoder." + key.removeprefix("base_model.model."): value for key, value in
                  load_file(str(tmp_path / "lora" / "text_encoder" / "adapter_model.safetensors")).items()})
    assert (tmp_path / "out" / "training_progress_lora" / "step_00001.png").is_file()
    args = trainer.parse_args(argv)
    args.base_model = str(tiny_pipeline_dir)
    resolve_training_defaults(args)  # as the run resolved them: a base other than micro takes SD 1.5's
    identifier_file = load_file(str(tmp_path / "lora" / IDENTIFIER_FILE))
    pieces = ["s", "k", "s</w>"]  # "sks" on the tiny letter tokenizer, in the order the vectors train
    assert sorted(identifier_file) == sorted(pieces)
    saved[trainer.IDENTIFIER_PARAMETER] = torch.stack([identifier_file[piece] for piece in pieces])
    gradients = gradients_per_rank(args, tiny_pipeline_dir, instance_dir, ranks=[0, 1])
    averaged, comparable = predicted_adapter(args, gradients, tiny_pipeline_dir)
    rank0_only, _ = predicted_adapter(args, gradients[:1], tiny_pipeline_dir)
    assert set(saved) == set(averaged)
    # Most of every kind of weight is compared: B (zero at the start), A, the identifier's vectors.
    for kind in (".lora_B.", ".lora_A.", trainer.IDENTIFIER_PARAMETER):
        masks = [comparable[key] for key in saved if kind in key]
        assert torch.cat([mask.flatten() for mask in masks]).float().mean() > 0.5, kind
    tolerance = 1e-2 * args.learning_rate  # far above eps the step is lr * sign(g) to within lr * 1e-3
    moved_elsewhere = 0
    for key, mask in comparable.items():
        difference = (saved[key] - averaged[key]).abs()[mask]
        assert difference.max() <= tolerance, (key, difference.max().item())
        # rank 0's gradient alone: another sign wherever the two processes' gradients disagree
        moved_elsewhere += ((saved[key] - rank0_only[key]).abs()[mask] > tolerance).sum().item()
    assert moved_elsewhere > 0.1 * sum(mask.sum().item() for mask in comparable.values())
