"""The proxy teacher: a small SD-shaped text-to-image model trained from scratch on proxy data.

Same kind as the real models the trainer distils: an epsilon-predicting ``UNet2DConditionModel``
conditioned through cross-attention on a ``CLIPTextModel`` fed by a real ``CLIPTokenizer``, on the
SD scaled-linear schedule, saved as a diffusers folder (``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, ``model_index.json``). It works in pixel space (3 x 16 x 16), so
the folder has no ``vae/``: the trainer treats a missing VAE as "latents are pixels".

Train (about 25 minutes on 2 CPU cores; the committed weights in ``proxy/weights/teacher`` were
made with exactly this command)::

    python -m proxy.teacher --out proxy/weights/teacher --steps 3000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rayflow.atomic_write import atomic_path, write_json

from .data import all_labels, caption_of, render, vocabulary

RESOLUTION = 16
UNET_CONFIG = dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, layers_per_block=1,
                   block_out_channels=(32, 64, 64), cross_attention_dim=64, attention_head_dim=4,
                   norm_num_groups=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=16, projection_dim=64)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
MAX_TOKENS = 16


def build(out_dir: str, seed: int = 0):
    """Fresh random-weight teacher components; writes the tokenizer to ``out_dir/tokenizer``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from training.tokenizers import write_clip_tokenizer

    tok_dir = write_clip_tokenizer(vocabulary(), os.path.join(out_dir, "tokenizer"), model_max_length=MAX_TOKENS)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                                **TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return unet, text_encoder, tokenizer


def encode(text_encoder, tokenizer, captions):
    ids = tokenizer(list(captions), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device)).last_hidden_state


def save(out_dir: str, unet, text_encoder) -> None:
    from diffusers import DDIMScheduler

    unet.to(torch.float16).save_pretrained(os.path.join(out_dir, "unet"))
    text_encoder.to(torch.float16).save_pretrained(os.path.join(out_dir, "text_encoder"))
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(os.path.join(out_dir, "scheduler"))
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                   "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
                   "vae": [None, None], "safety_checker": [None, None], "feature_extractor": [None, None],
                   "requires_safety_checker": False}, f, indent=2)


def _save_state(path: str, step: int, run: dict, modules, emas, opt, g: torch.Generator) -> None:
    """The training state after ``step`` steps of the run ``run`` (its settings) in the folder ``path``,
    written whole (safetensors for every tensor: weights, EMA, AdamW moments, the generator; JSON for
    the step and the settings)."""
    from safetensors.torch import save_file

    # copies: a model's tied weights (T5's shared embedding) share memory, which safetensors refuses
    # (on the CPU, wherever the run trains: a state resumes on either device)
    tensors = {f"model{i}.{k}": v.detach().to("cpu", copy=True) for i, m in enumerate(modules) for k, v in m.state_dict().items()}
    tensors.update({f"ema{i}.{k}": v.cpu().contiguous() for i, e in enumerate(emas) for k, v in e.items()})
    for j, st in opt.state_dict()["state"].items():
        tensors.update({f"opt.{j}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).cpu().contiguous() for k, v in st.items()})
    tensors["generator"] = g.get_state()
    with atomic_path(path) as tmp:
        os.makedirs(tmp)
        save_file(tensors, os.path.join(tmp, "state.safetensors"))
        write_json(os.path.join(tmp, "step.json"), {"step": step, **run})


def state_settings(path: str) -> dict:
    """The ``step.json`` of the training state :func:`_save_state` wrote in the folder ``path``: its
    ``step`` and the run's settings."""
    with open(os.path.join(path, "step.json"), encoding="utf-8") as f:
        return json.load(f)


def load_ema(path: str, modules) -> None:
    """Load the EMA weights of the training state :func:`_save_state` wrote in the folder ``path`` into
    ``modules`` (the run's modules, in its order): a teacher as it stood at that step, while its run
    goes on."""
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(path, "state.safetensors"))
    for i, m in enumerate(modules):
        m.load_state_dict({k: tensors[f"ema{i}.{k}"] for k in m.state_dict()})


def _load_state(path: str, run: dict, modules, emas, opt, g: torch.Generator) -> int:
    """Restore what :func:`_save_state` wrote into ``modules``, ``emas``, ``opt`` and ``g``; returns the
    step. A state saved by a run with other settings than ``run`` is one line, and nothing is changed."""
    from safetensors.torch import load_file

    saved = state_settings(path)
    other = {k: saved.get(k) for k in run if saved.get(k) != run[k]}
    if other:
        raise SystemExit(f"the training state in {path} belongs to a run with "
                         + ", ".join(f"{k} {v}" for k, v in other.items())
                         + f" (this one: {', '.join(f'{k} {run[k]}' for k in other)}); give the same settings or another --checkpoint")
    tensors = load_file(os.path.join(path, "state.safetensors"))
    for i, (m, e) in enumerate(zip(modules, emas)):
        m.load_state_dict({k: tensors[f"model{i}.{k}"] for k in m.state_dict()})
        e.update({k: tensors[f"ema{i}.{k}"].to(e[k].device) for k in e})
    state = opt.state_dict()
    for j in range(sum(len(group["params"]) for group in state["param_groups"])):
        parts = {k[len(f"opt.{j}."):]: v for k, v in tensors.items() if k.startswith(f"opt.{j}.")}
        if parts:
            state["state"][j] = parts
    opt.load_state_dict(state)
    g.set_state(tensors["generator"])
    return int(saved["step"])


def fit(modules, loss_fn, steps: int, batch: int, seed: int, lr: float, log_every: int = 100,
        checkpoint: str = "", checkpoint_every: int = 200, device: str = "cpu", settings: dict = None) -> None:
    """The proxy teachers' training loop (this one and ``proxy/teacher_flow.py``): AdamW over every
    parameter of ``modules`` (weight decay 1e-4, 200 warm-up steps then cosine decay, gradients clipped
    at 1.0) on ``loss_fn(x0, captions, noise, generator)`` for batches of proxy images ``x0`` ``[B, 3, R, R]``
    of uniformly drawn captions (one in ten replaced by ``""``, the unconditional prompt of CFG) and
    their noise; everything random comes from one generator seeded with ``seed``. The modules end with
    their EMA weights (decay ``min(0.999, (1 + step) / (10 + step))``). With ``checkpoint`` (a folder),
    the state is saved there every ``checkpoint_every`` steps and a run finding it continues from it,
    exactly as if it had not stopped. The modules train on ``device`` (``cpu`` or ``cuda``) and end on
    the CPU; the data, captions and noise are drawn on the CPU from the one generator either way, so a
    GPU run differs from a CPU run by floating-point rounding only. ``settings`` (JSON values) join the
    run's own (steps, batch, seed, lr) in the checkpoint: a state saved with other values is refused."""
    from training.trainer import warmup_cosine

    for m in modules:
        m.to(device)
    emas = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    labels_all = all_labels()
    g = torch.Generator().manual_seed(seed)
    run = {"steps": steps, "batch": batch, "seed": seed, "lr": lr, **(settings or {})}
    start = _load_state(checkpoint, run, modules, emas, opt, g) if checkpoint and os.path.isdir(checkpoint) else 0
    sched = warmup_cosine(opt, 200, steps)
    for _ in range(start):
        sched.step()
    if start:
        print(f"resumed from {checkpoint} at step {start}", flush=True)
    t0 = time.time()
    for step in range(start, steps):
        labels = labels_all[torch.randint(0, len(labels_all), (batch,), generator=g)]
        x0 = render(labels, g, RESOLUTION)
        captions = [caption_of(l) if float(u) > 0.1 else "" for l, u in zip(labels.tolist(), torch.rand(batch, generator=g))]
        noise = torch.randn(x0.shape, generator=g)
        loss = loss_fn(x0.to(device), captions, noise.to(device), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for store, model in zip(emas, modules):
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        store[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        if (step + 1) % log_every == 0 or step == start:
            el = time.time() - t0
            done = step + 1 - start
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{el / done:.2f}s/step eta {el / done * (steps - step - 1) / 60:.1f}min", flush=True)
        if checkpoint and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            _save_state(checkpoint, step + 1, run, modules, emas, opt, g)
    for store, model in zip(emas, modules):
        model.load_state_dict(store)
        model.to("cpu")


def train(out_dir: str, steps: int, batch: int, seed: int, lr: float, log_every: int = 100,
          checkpoint: str = "", device: str = "cpu") -> None:
    from diffusers import DDPMScheduler

    unet, text_encoder, tokenizer = build(out_dir, seed)
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset")})

    def loss_fn(x0, captions, noise, g):       # epsilon prediction at uniform timesteps
        t = torch.randint(0, 1000, (len(x0),), generator=g).to(x0.device)
        x_t = noise_sched.add_noise(x0, noise, t)
        ctx = encode(text_encoder, tokenizer, captions)
        return (unet(x_t, t, encoder_hidden_states=ctx).sample - noise).pow(2).mean()

    fit([unet, text_encoder], loss_fn, steps, batch, seed, lr, log_every, checkpoint, device=device)
    save(out_dir, unet, text_encoder)
    print(f"saved teacher to {out_dir}")


def teacher_parser(description: str, out: str, steps: int) -> argparse.ArgumentParser:
    """The proxy teachers' command line (this one and ``proxy/teacher_flow.py``, which adds its own
    options): ``--out``, ``--steps``, ``--batch``, ``--lr``, ``--seed``, ``--checkpoint``, ``--device``
    and ``--threads``, with the teacher's defaults; read it with :func:`teacher_args`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=out, help="output diffusers folder")
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=64, help="batch size")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up then cosine decay)")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where it trains (default cpu, as the committed weights were made; the same data and noise on either)")
    ap.add_argument("--checkpoint", default="", metavar="DIR",
                    help="keep the training state in DIR (every 200 steps); the same command finding it continues "
                         "from it exactly (default: no checkpoint)")
    return ap


def teacher_args(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``argv`` read by ``ap`` (a :func:`teacher_parser`): a CUDA device torch cannot see is one line
    before any work; ``--threads`` is applied here."""
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None) -> int:
    args = teacher_args(teacher_parser("Train the proxy teacher (small SD-shaped text-to-image model).",
                                       "proxy/weights/teacher", 3000), argv)
    os.makedirs(args.out, exist_ok=True)
    train(args.out, args.steps, args.batch, args.seed, args.lr, checkpoint=args.checkpoint, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
