"""LCM-style consistency-distilled LoRA: the few-step baseline ComfyUI users know (LCM-LoRA).

The recipe of Luo et al. (LCM / LCM-LoRA) as diffusers' ``train_lcm_distill_lora_sd_wds.py``
publishes it (``LCM_RECIPE``), on the same phase-1 cache, LoRA shape and training budget as the
RayFlow variants of ``bench/variants.py``:

* a DDIM skipping-step grid ``t_n in {k-1, 2k-1, ..., T-1}`` with ``k = 20`` (50 steps);
* the consistency parametrisation ``f(x, t) = c_skip(t) x + c_out(t) x0_pred(x, t)`` with the
  boundary scalings of diffusers' ``LCMScheduler`` (``sigma_data = 0.5``, ``timestep_scaling = 10``),
  so ``f(x, 0) = x``;
* the teacher (the base UNet without the LoRA, classifier-free guidance ``w``) takes one DDIM step
  ``t_n -> t_n - k`` from ``x_{t_n} = sqrt(a) x0 + sqrt(1 - a) eps`` (``x0`` = the cached teacher
  samples, the data both methods see);
* the target is the LoRA student itself at the teacher's point, without gradient (LCM-LoRA uses
  no EMA copy; ``ema_target=0.95``, the LCM paper's target network, is an option);
* the script's optimisation: AdamW at lr 1e-4 with weight decay 1e-2, gradient clipping at 1.0,
  a constant learning rate (the script's ``--lr_scheduler constant``; diffusers' ``get_scheduler``
  ignores the 500 warm-up steps it also names for that schedule), the L2 loss (``loss="huber"``:
  the pseudo-Huber distance ``sqrt(d^2 + c^2) - c`` with ``c = 0.001``).

Sampling uses diffusers' ``LCMScheduler`` (multistep consistency sampling with noise injection),
one UNet evaluation per step.

Training and sampling run on one ``device`` (training: the ``device`` argument; sampling: where the
model lies, ``proxy.sampling.model_device``). Every random draw (batches, timesteps, noise, the noise
LCM sampling injects) comes from the same CPU generators on any device and is moved there, so a GPU
run differs from a CPU run by floating-point rounding only, and a CPU run is what it was before.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Tuple

import torch
from diffusers import LCMScheduler
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from proxy.data import caption_of
from proxy.sampling import model_device
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import DistillConfig
from training.data import item_noise, load_cache
from training.distill import snapshot_path
from training.export import SAVE_DTYPES, kohya_unet_state_dict, save_atomic
from training.models import load_base_model
from training.trainer import add_lora, lora_state, phase2_generator, warmup_cosine

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0
SKIP = 20                 # DDIM skipping step k (50-step grid over 1000 training timesteps)
HUBER_C = 0.001
# diffusers' train_lcm_distill_lora_sd_wds.py defaults (the learning rate of its README's LCM-LoRA example)
LCM_RECIPE = dict(learning_rate=1e-4, weight_decay=1e-2, max_grad_norm=1.0, lr_schedule="constant", lr_warmup=500,
                  loss="l2", ema_target=0.0)
LOSSES = ("l2", "huber")


def boundary_scalings(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``c_skip(t)``, ``c_out(t)`` ``[B]`` for integer timesteps ``t`` ``[B]`` (LCMScheduler's)."""
    s = t.double() * TIMESTEP_SCALING
    return SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2), s / (s ** 2 + SIGMA_DATA ** 2).sqrt()


def skipping_grid(num_timesteps: int, skip: int = SKIP) -> torch.Tensor:
    """The DDIM solver's timesteps ``[k - 1, 2k - 1, ..., T - 1]`` ``[T // k]``."""
    return torch.arange(1, num_timesteps // skip + 1) * skip - 1


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The clean-image prediction of a noise prediction ``eps`` at ``x`` with ``alphas_cumprod`` ``a``."""
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def consistency_fn(eps_fn, x: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``f(x, t) = c_skip x + c_out x0_pred`` for ``x`` ``[B, C, H, W]`` and timesteps ``t`` ``[B]``;
    the schedule math runs in float64 and the result is cast back to ``x.dtype``."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    c_skip, c_out = (c.view(-1, 1, 1, 1) for c in boundary_scalings(t))
    x64 = x.double()
    return (c_skip * x64 + c_out * x0_from_eps(x64, eps_fn(x, t).double(), a)).to(x.dtype)


def eps_net(unet):
    """``unet`` as the ``(x, t, ehs) -> noise prediction`` function :func:`lcm_loss` takes."""
    return lambda x, t, ehs: unet(x, t, encoder_hidden_states=ehs).sample


def guided_ddim_step(teacher, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor,
                     uncond: torch.Tensor, alphas_cumprod: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """The teacher's DDIM step ``x_t -> x_s`` ``[B, C, H, W]`` from timesteps ``t`` to ``s`` ``[B]`` with
    classifier-free guidance ``cfg_scale`` (``cond`` / ``uncond`` ``[B, L, D]``; ``teacher`` maps
    ``(x, t, ehs)`` to noise predictions); the schedule math in float64, the result in float32."""
    e_u, e_c = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])).double().chunk(2)
    eps = e_u + cfg_scale * (e_c - e_u)
    a_t, a_s = alphas_cumprod[t].view(-1, 1, 1, 1), alphas_cumprod[s].view(-1, 1, 1, 1)
    return (a_s.sqrt() * x0_from_eps(x_t.double(), eps, a_t) + (1 - a_s).sqrt() * eps).float()


def distance(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """The mean distance between ``pred`` and ``target`` (same shape): ``l2`` (squared error) or ``huber``
    (pseudo-Huber ``sqrt(d^2 + c^2) - c``, ``HUBER_C``), computed in float32."""
    d2 = (pred.float() - target.float()) ** 2
    if loss == "huber":
        return (torch.sqrt(d2 + HUBER_C ** 2) - HUBER_C).mean()
    if loss != "l2":
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return d2.mean()


def lcm_loss(student, teacher, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
             alphas_cumprod: torch.Tensor, cfg_scale: float, t: torch.Tensor, noise: torch.Tensor,
             skip: int = SKIP, loss: str = "l2", target_net=None) -> torch.Tensor:
    """One LCM distillation loss on data ``x0`` ``[B, C, H, W]`` noised with ``noise`` (same shape)
    to grid timesteps ``t`` ``[B]`` (:func:`skipping_grid`), with text conditioning ``cond``
    ``[B, L, D]`` and the negative prompt's ``uncond`` ``[B, L, D]``. ``student`` / ``teacher`` /
    ``target_net`` (default: the student) map ``(x, t, ehs)`` to noise predictions; ``alphas_cumprod``
    ``[T]`` float64; ``loss`` is ``l2`` (mean squared error) or ``huber`` (pseudo-Huber, ``HUBER_C``)."""
    s = (t - skip).clamp(min=0)
    a_t = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = (a_t.sqrt() * x0.double() + (1 - a_t).sqrt() * noise.double()).float()
    pred = consistency_fn(lambda x, tt: student(x, tt, cond), x_t, t, alphas_cumprod)
    with torch.no_grad():
        x_s = guided_ddim_step(teacher, x_t, t, s, cond, uncond, alphas_cumprod, cfg_scale)
        target = consistency_fn(lambda x, tt: (target_net or student)(x, tt, cond), x_s, s, alphas_cumprod)
    return distance(pred, target, loss)


def lr_schedule(opt: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """The learning-rate schedule ``kind`` of diffusers' ``get_scheduler`` (``constant`` ignores
    ``warmup``, as there) or ``warmup_cosine``, the RayFlow trainer's."""
    if kind == "warmup_cosine":
        return warmup_cosine(opt, warmup, total)
    return get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total)


@dataclass
class ConsistencyTask:
    """One model family's part of LCM distillation, for :func:`train_consistency_lora`.

    Attributes:
        teacher: the base denoiser (frozen; a copy of it with a LoRA becomes the student).
        loss: ``(student, teacher, target, x0 [B, C, H, W], cond, t [B], noise [B, C, H, W]) -> loss``:
            the nets as modules (``target`` None: the student without gradient), ``cond`` the cache's
            conditioning dict of the batch, ``t`` indices of the model's schedule drawn from ``grid``.
        grid: ``[G]`` the schedule indices the timesteps are drawn from.
        targets: the LoRA's target module names (comma-separated, ``add_lora``'s).
        export: ``(peft LoRA state, rank, alpha, precision) -> the LoRA file's tensors``.
        blocks, exclude: ``add_lora``'s (the model's ``lora_blocks`` / ``lora_exclude``).
    """
    teacher: torch.nn.Module
    loss: Callable[..., torch.Tensor]
    grid: torch.Tensor
    targets: str
    export: Callable[..., Dict[str, torch.Tensor]]
    blocks: tuple = ()
    exclude: tuple = ()


def distil_lcm(teacher_path: str, cache_folder: str, output: str, train_steps: int, cfg_scale: float = 3.0,
               resolution: int = 16, loss: str = LCM_RECIPE["loss"], **options) -> str:
    """Train an LCM-LoRA on the base model at ``teacher_path`` (a diffusers folder of an epsilon model)
    from the phase-1 cache in ``cache_folder`` with the teacher's CFG ``cfg_scale`` and the ``loss``
    (``LOSSES``); write it (kohya keys, like RayFlow LoRAs) to ``output``. ``options`` are those of
    :func:`train_consistency_lora` (batch, LoRA shape, seed, snapshots, checkpoints, the optimisation
    of ``LCM_RECIPE`` by default, EMA target, device)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    model = load_base_model(teacher_path)
    cache = load_cache(cache_folder)
    ac = model.schedule.alphas_cumprod.double()
    uncond_one = model.encode_prompts([""], torch.device("cpu"))["cond"]

    def vp_loss(student, teacher, target, x0, cond, t, noise):
        c = cond["cond"]
        return lcm_loss(eps_net(student), eps_net(teacher), x0, c, uncond_one.to(c.device).expand_as(c), ac.to(c.device),
                        cfg_scale, t, noise, loss=loss, target_net=None if target is None else eps_net(target))

    task = ConsistencyTask(model.unet, vp_loss, skipping_grid(len(ac)), DistillConfig.__dataclass_fields__["lora_targets"].default,
                           lambda state, rank, alpha, precision: kohya_unet_state_dict(state, rank, alpha, SAVE_DTYPES[precision]))
    meta = {"lcm.cfg": str(cfg_scale), "lcm.skip": str(SKIP), "lcm.resolution": str(resolution), "lcm.loss": loss}
    return train_consistency_lora(task, cache, output, train_steps, meta, **options)


def train_consistency_lora(task: ConsistencyTask, cache, output: str, train_steps: int, meta: Dict[str, str],
                           batch_size: int = 32, lora_rank: int = 16, lora_alpha: float = 16.0, seed: int = 0,
                           progress: bool = True, checkpoint_dir: Optional[str] = None, checkpoint_every: int = 300,
                           save_every: int = 0, save_precision: str = "fp32", learning_rate: float = LCM_RECIPE["learning_rate"],
                           weight_decay: float = LCM_RECIPE["weight_decay"],
                           max_grad_norm: float = LCM_RECIPE["max_grad_norm"],
                           lr_schedule_kind: str = LCM_RECIPE["lr_schedule"], lr_warmup: int = LCM_RECIPE["lr_warmup"],
                           ema_target: float = LCM_RECIPE["ema_target"], device="cpu") -> str:
    """The LCM-LoRA training loop over ``task`` (one family's loss, grid and LoRA) on the phase-1
    ``cache`` (``training.data.load_cache``): a rank-``lora_rank`` LoRA trained for ``train_steps``
    steps at batch ``batch_size`` and written (weights in ``save_precision``) to ``output`` with the
    metadata ``meta`` and ``lcm.baseline``, ``lcm.train_steps``, ``lcm.learning_rate``,
    ``lcm.ema_target``, and every ``save_every`` steps a snapshot ``<output stem>-step<N>.safetensors``
    (``training.distill.snapshot_path``). The optimisation options default to ``LCM_RECIPE``;
    ``ema_target`` > 0 makes the target an EMA of the student's LoRA with that decay. Batches are
    those of the RayFlow trainer with the same ``seed`` (paired), then the timesteps and noise. The
    nets train on ``device``; the cache stays on the CPU and each batch is moved there.

    With ``checkpoint_dir``, the LoRA (and its EMA), optimizer, LR schedule and generator states are
    saved there every ``checkpoint_every`` steps (``training.checkpoint``: safetensors + JSON,
    atomic), and a call that finds a checkpoint continues from it: a run killed at any point and
    called again gives the LoRA of an uninterrupted run, bit for bit. The checkpoint is removed at
    the end."""
    teacher_net = task.teacher
    student_net = copy.deepcopy(teacher_net)
    torch.manual_seed(seed)
    add_lora(student_net, SimpleNamespace(lora_targets=task.targets, lora_rank=lora_rank, lora_alpha=lora_alpha),
             blocks=task.blocks, exclude=task.exclude)
    teacher_net.to(device)           # after the LoRA's initialisation, which draws on the CPU whatever the device
    student_net.to(device)
    student_net.train()
    named = {n: p for n, p in student_net.named_parameters() if p.requires_grad}
    params = list(named.values())
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    sched = lr_schedule(opt, lr_schedule_kind, lr_warmup, train_steps)
    target_net = None
    if ema_target > 0:           # the LCM paper's target network: an EMA of the student's LoRA
        target_net = copy.deepcopy(student_net).requires_grad_(False).eval()
    ema_named = {} if target_net is None else {n: p for n, p in target_net.named_parameters() if n in named}

    # the batches of the RayFlow trainer with the same seed (paired), then the LCM timesteps and noise
    g_data, g = phase2_generator(seed, "batches"), torch.Generator().manual_seed(seed)
    N, grid = cache.x0.shape[0], task.grid
    start = 0
    state = load_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if state is not None:
        if state["train_steps"] != train_steps or state["seed"] != seed or sorted(state["lora"]) != sorted(named):
            raise SystemExit(f"the LCM checkpoint in {checkpoint_dir} is of another run "
                             f"(train_steps {state['train_steps']}, seed {state['seed']}); delete it to start over")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(state["lora"][n])
            for n, p in ema_named.items():
                p.copy_(state["ema"][n])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g_data.set_state(state["g_data"])
        g.set_state(state["g"])
        start = state["step"]

    def save(step: int) -> None:
        save_checkpoint(checkpoint_dir, {"step": step, "train_steps": train_steps, "seed": seed,
                                         "lora": {n: p.detach().clone() for n, p in named.items()},
                                         "ema": {n: p.detach().clone() for n, p in ema_named.items()},
                                         "opt": opt.state_dict(), "sched": sched.state_dict(),
                                         "g_data": g_data.get_state(), "g": g.get_state()})

    def export(path: str, steps: int) -> None:       # no rayflow.format: not a RayFlow LoRA
        save_atomic(task.export(lora_state(student_net), lora_rank, lora_alpha, save_precision), path,
                    {"lcm.baseline": "1", "lcm.train_steps": str(steps), **meta, "lcm.learning_rate": str(learning_rate),
                     "lcm.ema_target": str(ema_target)})

    bar = tqdm(range(start, train_steps), desc="LCM-LoRA distillation", disable=not progress,
               initial=start, total=train_steps)
    for step in bar:
        idx = torch.randint(N, (batch_size,), generator=g_data)
        t = grid[torch.randint(len(grid), (batch_size,), generator=g)].to(device)
        x0, cond = cache.x0[idx].to(device), {k: v[idx].to(device) for k, v in cache.cond.items()}
        noise = torch.randn(x0.shape, generator=g).to(device)      # drawn on the CPU, as every random number here
        value = task.loss(student_net, teacher_net, target_net, x0, cond, t, noise)
        opt.zero_grad(set_to_none=True)
        value.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        with torch.no_grad():
            for n, p in ema_named.items():
                p.mul_(ema_target).add_(named[n].detach(), alpha=1 - ema_target)
        bar.set_postfix(loss=f"{value.item():.4f}")
        done = step + 1
        if save_every and done % save_every == 0 and done < train_steps:
            export(snapshot_path(output, done), done)
        if checkpoint_dir and checkpoint_every > 0 and done % checkpoint_every == 0 and done < train_steps:
            save(done)
    export(output, train_steps)
    if checkpoint_dir:
        for folder in (checkpoint_dir, checkpoint_dir + ".prev"):
            shutil.rmtree(folder, ignore_errors=True)
    return output


def lcm_scheduler(model):
    """diffusers' ``LCMScheduler`` over the base model's schedule (the same betas as training)."""
    T = model.schedule.num_timesteps
    return LCMScheduler(num_train_timesteps=T, trained_betas=model.schedule.betas.float().tolist(),
                        original_inference_steps=T // SKIP, clip_sample=False, set_alpha_to_one=True,
                        timestep_scaling=TIMESTEP_SCALING, prediction_type="epsilon")


@torch.no_grad()
def lcm_sample(model, unet, x: torch.Tensor, ehs: torch.Tensor, steps: int, generator: torch.Generator,
               on_step=None) -> torch.Tensor:
    """The latents ``[N, C, H, W]`` the LCM-LoRA ``unet`` reaches from the noise ``x`` in ``steps``
    LCMScheduler steps with the text states ``ehs``; ``generator`` (on the CPU) draws the noise LCM
    injects between steps, and ``on_step(denoised)``, where given, sees the denoised sample of every
    step (the last one is the result)."""
    sched = lcm_scheduler(model)
    sched.set_timesteps(steps)          # its timesteps and tables stay on the CPU; the UNet gets t on the device
    for t in sched.timesteps:
        out = sched.step(unet(x, t.to(x.device).expand(len(x)), encoder_hidden_states=ehs).sample, t, x,
                         generator=generator)
        x = out.prev_sample             # the last step returns the denoised sample
        if on_step is not None:
            on_step(out.denoised)
    return x


def lcm_samples(model, unet, labels: torch.Tensor, seeds: torch.Tensor, steps: int, sample_seed: int = 0):
    """Images ``[N, 3, H, W]`` of the LCM-LoRA ``unet`` in ``steps`` LCMScheduler steps for proxy
    captions ``labels`` ``[N, 4]`` and per-item initial-noise seeds ``seeds`` ``[N]`` (the same noise
    as every other method of the benchmark). Returns ``(images, NFE per image)``, the images on the CPU."""
    captions = [caption_of(l) for l in labels.tolist()]
    device = model_device(model)      # the LoRA ``unet`` lies there too
    ehs = model.encode_prompts(captions, device)["cond"]
    x = item_noise(0, seeds, (model.latent_channels, 16, 16)).to(device)
    x = lcm_sample(model, unet, x, ehs, steps, torch.Generator().manual_seed(sample_seed))
    return model.decode(x).cpu(), steps
