"""The flow-matching proxy teacher: a small SD3-shaped text-to-image model trained from scratch on the
proxy data with the rectified-flow objective.

Same kind as the SD3 / SD3.5 models the trainer distils (``training/flow_models.py``): a diffusers
``SD3Transformer2DModel`` (joint text-image attention with RMS q/k norm as in SD3.5, ``--patch-size``
2 by default, timestep input ``1000 t``) predicting the velocity ``v = n - x0`` of
``x_t = (1 - t) x0 + t n``, conditioned on CLIP-L and CLIP-G (``CLIPTextModelWithProjection``, hidden
states and pooled projections) and T5 (``T5EncoderModel``) through diffusers' own
``StableDiffusion3Pipeline.encode_prompt``, on a time-shifted schedule (``FlowMatchEulerDiscreteScheduler``
with ``--shift``, 1 by default: see ``SHIFT``), saved as a ``StableDiffusion3Pipeline`` folder. It
works in pixel space (3 x 16 x 16; 64 image tokens at patch 2, 256 at patch 1), so the folder has no
``vae/`` and ``training.flow_models`` treats the images as the latents; its tokenizers read at most 16
tokens and ``model_index.json`` declares the 16 T5 tokens it was trained on
(``training.flow_models.T5_LENGTH_KEY``), so phase 1 caches 16 + 16 text tokens (the real SD3: 77 + 256).

Training: the teacher loop of ``proxy/teacher.py`` (same data, caption dropout, optimizer, EMA) on the
rectified-flow loss ``|v_theta(x_t, t, c) - (n - x0)|^2``, the noise level ``t`` from the model's own
table at ``u`` drawn logit-normal (SD3's training density) or, one time in ten, uniform (so the top of
the schedule, where every sampler starts, is trained too). A run keeps its state with
``--checkpoint DIR`` (every 200 steps; the shift and patch size are part of it) and continues from it
exactly when the same command runs again, so it can span several sessions (``--export-state`` writes
the teacher of a state's EMA weights without training, to check a long run midway)::

    OMP_NUM_THREADS=1 python -m proxy.teacher_flow --out proxy/weights/flow_teacher --steps 16000 --batch 64 \
        --seed 0 --threads 1 --shift 1 --patch-size 2 --checkpoint outputs/flow_teacher_state

made the committed teacher (``proxy/weights/flow_teacher``: about 4 hours of one CPU thread, resumed
across sessions; ``--device cuda`` trains the same run on a GPU). Its samples align with every
caption at 25 steps (1.000; FD to data 122 with Euler, 111 with DPM-Solver++; the VP teacher: 1.000,
110.5) and keep small shapes from every noise level; the teachers of 4000-6000 steps missed them
(``docs/experiments.md``, "The flow-matching proxy teacher"; its rows: ``python -m bench.quality
--proxy flow --seeds 0 --teacher-only --out DIR``; where shapes are kept: ``python -m
bench.teacher_recovery``).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from rayflow import FlowSchedule
from rayflow.atomic_write import atomic_path, write_json
from training.flow_family import FAMILIES
from training.flow_models import T5_LENGTH_KEY, text_conditioning

from .data import vocabulary
from .teacher import RESOLUTION, fit, load_ema, state_settings, teacher_args, teacher_parser

# the time shift of the schedule (the scheduler's static ``shift``). SD3 uses 3 at 1024 x 1024; its
# paper's rule (shift sqrt(m / n) for m image dimensions against a base of n) gives a shift of at most
# 1 for a 16 x 16 pixel image. With shift 3 the logit-normal density puts under 8 % of training below
# t = 0.4; shift 1 kept more shapes at every noise level after 4000 steps than shift 3 after 6000
# (docs/experiments.md)
SHIFT = 1.0
MAX_TOKENS = 16        # CLIP and T5 tokens (the longest caption has 9 words)
CLIP_WIDTH, T5_WIDTH = 64, 128          # CLIP-L and CLIP-G are 64 wide; SD3 pads both (64 + 64) to T5's width
PATCH_SIZE = 2         # pixels per image token side (SD3: 2 latent pixels)
TRANSFORMER_CONFIG = dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, num_layers=4,
                          attention_head_dim=32, num_attention_heads=4, joint_attention_dim=T5_WIDTH,
                          caption_projection_dim=128, pooled_projection_dim=2 * CLIP_WIDTH, qk_norm="rms_norm")
UNIFORM_SHARE = 0.1    # share of the noise levels drawn at uniform u instead of logit-normal


def _tokenizers(folder: str):
    """Write the CLIP (x2) and T5 tokenizers over the caption vocabulary into ``folder``; return them loaded."""
    from transformers import AutoTokenizer, CLIPTokenizer

    from training.tiny import write_t5_tokenizer
    from training.tokenizers import write_clip_tokenizer

    clip = [CLIPTokenizer.from_pretrained(write_clip_tokenizer(vocabulary(), os.path.join(folder, sub), MAX_TOKENS))
            for sub in ("tokenizer", "tokenizer_2")]
    t5 = AutoTokenizer.from_pretrained(write_t5_tokenizer(vocabulary(), os.path.join(folder, "tokenizer_3"), MAX_TOKENS))
    return [*clip, t5]


def build(tokenizers, seed: int = 0, patch_size: int = PATCH_SIZE):
    """Fresh random-weight ``(transformer, [CLIP-L, CLIP-G, T5])`` for the loaded ``tokenizers``, the
    transformer cutting the image into ``patch_size`` x ``patch_size`` tokens."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    encoders = []
    for tok in tokenizers[:2]:
        encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=CLIP_WIDTH,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)))
    encoders.append(T5EncoderModel(T5Config(vocab_size=len(tokenizers[2]), d_model=T5_WIDTH, d_kv=32, d_ff=2 * T5_WIDTH,
                                            num_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                                            eos_token_id=1)))
    transformer = SD3Transformer2DModel(**TRANSFORMER_CONFIG, patch_size=patch_size,
                                        pos_embed_max_size=RESOLUTION // patch_size)
    return transformer, encoders


def save(out_dir: str, transformer, encoders, shift: float = SHIFT) -> None:
    """The diffusers folder (fp16 weights, tokenizers, the scheduler with ``shift``, ``model_index.json``), written whole."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    with atomic_path(out_dir) as tmp:
        os.makedirs(tmp)
        _tokenizers(tmp)
        transformer.to(torch.float16).save_pretrained(os.path.join(tmp, "transformer"))
        for sub, enc in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), encoders):
            enc.to(torch.float16).save_pretrained(os.path.join(tmp, sub))
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).save_pretrained(os.path.join(tmp, "scheduler"))
        write_json(os.path.join(tmp, "model_index.json"), {
            "_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.42.1",
            "transformer": ["diffusers", "SD3Transformer2DModel"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer_3": ["transformers", "PreTrainedTokenizerFast"],
            "vae": [None, None], "image_encoder": [None, None], "feature_extractor": [None, None],
            T5_LENGTH_KEY: MAX_TOKENS}, indent=2)


def noise_levels(batch: int, g: torch.Generator, schedule: FlowSchedule) -> torch.Tensor:
    """Noise levels ``t`` ``[batch]`` from the model's table at ``u`` logit-normal (``UNIFORM_SHARE`` uniform)."""
    u = torch.sigmoid(torch.randn(batch, generator=g))
    uniform = torch.rand(batch, generator=g)
    u = torch.where(torch.rand(batch, generator=g) < UNIFORM_SHARE, uniform, u)
    k = (u * schedule.num_timesteps).long().clamp(0, schedule.num_timesteps - 1)
    return schedule.sigmas[k].float()


def train(out_dir: str, steps: int, batch: int, seed: int, lr: float, log_every: int = 100,
          checkpoint: str = "", device: str = "cpu", shift: float = SHIFT, patch_size: int = PATCH_SIZE) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tokenizers = _tokenizers(folder)
    transformer, encoders = build(tokenizers, seed, patch_size)
    schedule = FlowSchedule.shifted(shift, 1000)

    def loss_fn(x0, captions, noise, g):       # rectified flow: the velocity n - x0 at x_t = (1 - t) x0 + t n
        t = noise_levels(len(x0), g, schedule).view(-1, 1, 1, 1).to(x0.device)
        x_t = (1 - t) * x0 + t * noise
        cond = text_conditioning(FAMILIES["sd3"], encoders, tokenizers, captions, x0.device, MAX_TOKENS)
        v = transformer(hidden_states=x_t, timestep=1000.0 * t.flatten(), encoder_hidden_states=cond["cond"],
                        pooled_projections=cond["pooled"]).sample
        return (v - (noise - x0)).pow(2).mean()

    t0 = time.time()
    fit([transformer, *encoders], loss_fn, steps, batch, seed, lr, log_every, checkpoint, device=device,
        settings={"shift": shift, "patch_size": patch_size})
    save(out_dir, transformer, encoders, shift)
    print(f"saved the flow teacher to {out_dir} ({(time.time() - t0) / 60:.1f} min of training)")


def export_state(checkpoint: str, out_dir: str) -> int:
    """Write the teacher of the EMA weights in the training state ``checkpoint`` (with its run's shift
    and patch size) to ``out_dir`` as :func:`train` would at the end; returns the state's step."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizers = _tokenizers(folder)
    run = state_settings(checkpoint)
    transformer, encoders = build(tokenizers, run["seed"], run["patch_size"])
    load_ema(checkpoint, [transformer, *encoders])
    save(out_dir, transformer, encoders, run["shift"])
    return int(run["step"])


def main(argv=None) -> int:
    ap = teacher_parser("Train the flow-matching proxy teacher (small SD3-shaped model).", "proxy/weights/flow_teacher", 16000)
    ap.add_argument("--shift", type=float, default=SHIFT, help=f"time shift of the flow schedule (default {SHIFT:g})")
    ap.add_argument("--patch-size", type=int, choices=(1, 2, 4), default=PATCH_SIZE,
                    help=f"pixels per image token side (default {PATCH_SIZE})")
    ap.add_argument("--export-state", action="store_true",
                    help="train nothing: write the EMA weights of the --checkpoint state, at its step, to --out "
                         "(a new folder), to check a long run midway")
    args = teacher_args(ap, argv)
    if args.shift <= 0:
        ap.error("--shift must be positive")
    if args.export_state:
        if not os.path.isfile(os.path.join(args.checkpoint, "step.json")):
            ap.error("--export-state needs --checkpoint DIR with a training state in it")
        if os.path.exists(args.out):
            ap.error(f"--export-state writes a new folder and {args.out} exists; give another --out")
        step = export_state(args.checkpoint, args.out)
        print(f"wrote the flow teacher of {args.checkpoint} at step {step} to {args.out}")
        return 0
    train(args.out, args.steps, args.batch, args.seed, args.lr, checkpoint=args.checkpoint, device=args.device,
          shift=args.shift, patch_size=args.patch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
