"""Phase 2 of Algorithm 1: train a LoRA on the denoiser with the Ray process and the Time Sampler.

Per step (``docs/method.md`` eq. 7.1): draw cached items, timesteps ``t ~ q(t | x)`` from the Time
Sampler with importance weights ``w`` (uniform ``t``, ``w = 1`` with ``--no-time-sampler``), form
the model's training pair (``model.training_pair``: the noise target ``n_t`` of
``RayProcess.training_pair`` for the epsilon models, the velocity ``v = n - x0_hat`` of
``rayflow.flow_training_pair`` for SD3 / FLUX, eq. 10.7) and minimise
``w * lambda(t) * || prediction - target ||^2`` over the LoRA parameters (``model.loss_weight``: eq. 7.2,
on the velocity eq. 10.8). The Time Sampler network follows its SVGD loss on the running
per-timestep loss profile.

Everything random in phase 2 comes from the training seed (``DistillConfig.phase2_seed``) through
three generators, one per stream: the batches drawn from the cache, the timesteps (Time Sampler or
uniform), and the Ray noise. Separate streams pair the ablations: with the same seed the Time
Sampler and uniform arms (and the Ray and no-Ray arms) see identical batches, and the Ray arms
identical noise. The generators' states are checkpointed with the LoRA, the optimizer, the LR
schedule, the Time Sampler and the loss profile, so a resumed run continues exactly where the
killed one stopped.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from typing import Dict, Optional, Tuple

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from tqdm.auto import tqdm

from rayflow import LossProfile, TimeSampler
from rayflow.process import per_sample as per_sample_coef   # the loss below has a local per_sample

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ConfigError, DistillConfig
from .data import Cache
from .grid import save_grid
from .models import BaseModel
from .records import Scalars, append_record, append_row, drop_records_after, start_log

DIAG_BINS = 20      # timestep bins of the Time Sampler diagnostics (``time_sampler.jsonl``)


def ts_features(x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Time Sampler input ``[B, D + 4C]``: mean-pooled text conditioning and 2x2-pooled ``x0_hat``."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(x0.float(), 2).flatten(1)
    return torch.cat([cond.float().mean(1), pooled], dim=1)


def add_lora(unet: torch.nn.Module, cfg: DistillConfig, pixart: bool = False, blocks: Tuple[str, ...] = (),
             exclude: Tuple[str, ...] = ()) -> None:
    """peft LoRA on the Linear/Conv2d modules whose names end in one of ``cfg.lora_targets``, only
    inside the modules named by the prefixes ``blocks`` when given (the model's ``lora_blocks``: the
    transformer blocks of PixArt, SD3 and FLUX; ``pixart=True`` is PixArt's), except the modules named
    in ``exclude`` (the model's ``lora_exclude``: layers whose output the model never uses)."""
    blocks = tuple(blocks) or (("transformer_blocks.",) if pixart else ())
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
             and any(n == t or n.endswith("." + t) for t in targets)
             and (not blocks or n.startswith(blocks)) and n not in exclude]
    if not names:
        raise ConfigError(f"--lora-targets {cfg.lora_targets!r} matches no Linear/Conv2d module of the denoiser")
    # inject_adapter_in_model works for every denoiser class (PixArtTransformer2DModel has no add_adapter)
    inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                                       target_modules=names), unet)


def check_optimizer(cfg: DistillConfig) -> None:
    """Refuse ``--optimizer adamw8bit`` before any work when bitsandbytes is not installed."""
    if cfg.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("--optimizer adamw8bit needs bitsandbytes, which is not installed: pip install bitsandbytes")


def make_optimizer(params, cfg: DistillConfig) -> torch.optim.Optimizer:
    """AdamW over the LoRA ``params``: torch's, or bitsandbytes' 8-bit one for ``--optimizer adamw8bit``."""
    if cfg.optimizer == "adamw8bit":
        check_optimizer(cfg)
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at step ``total``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def lora_state(unet: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}


STREAMS = {"batches": 17, "timesteps": 29, "noise": 41}     # phase 2's random streams and their seed offsets


def phase2_generator(seed: int, stream: str, process_index: int = 0) -> torch.Generator:
    """The generator of one of phase 2's random ``STREAMS`` for training seed ``seed``: the cache
    indices of every batch, the timesteps or the Ray noise. The LCM baseline
    (``bench/lcm_baseline.py``) draws its batches from the same ``batches`` stream."""
    return torch.Generator().manual_seed(seed * 7919 + STREAMS[stream] + process_index)


def training_pair_of(model: BaseModel, process, cfg: DistillConfig, x0: torch.Tensor, mu: torch.Tensor,
                     z: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, target)`` the recipe ``cfg`` trains on for cached items (teacher samples ``x0``, target
    means ``mu``, seeded noises ``z``, each ``[B, C, H, W]``) at timesteps ``t`` ``[B]`` with the Ray
    noise ``noise`` (unused, and None, for ``no_ray``): the Ray process's pair (eq. 4.2, with the
    start anchoring of eq. 7.3 / 7.4 where ``cfg`` asks for it) or the ReFlow pair ``(x0, z)``."""
    if cfg.no_ray:      # ReFlow / Rectified Diffusion pairs: x_t from (x0_hat, z), target z (flow: z - x0_hat)
        return model.training_pair(process, x0, torch.zeros_like(x0), t, z)
    if cfg.start_anchor > 0:       # eq. 7.3: the top of the process centred on the seeded start z
        T = model.schedule.num_timesteps
        w_z = process.start_anchor_weight(t, T, cfg.start_anchor)
        mu = process.start_anchored_mean(mu, x0, z, model.schedule.alpha_bar(torch.tensor(float(T - 1))), w_z)
        if cfg.anchor_taper:       # eq. 7.4: the Ray noise fades out where the start point is the mean
            noise = noise * per_sample_coef(1.0 - w_z, noise)
    return model.training_pair(process, x0, mu, t, noise)


class Trainer:
    def __init__(self, cfg: DistillConfig, model: BaseModel, cache: Cache, accelerator):
        self.cfg, self.model, self.cache, self.acc = cfg, model, cache, accelerator
        self.process = cfg.training_process()
        seed = cfg.phase2_seed()
        torch.manual_seed(seed)                     # LoRA init
        unet = model.unet
        add_lora(unet, cfg, blocks=model.lora_blocks, exclude=model.lora_exclude)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self.params = [p for p in unet.parameters() if p.requires_grad]
        for p in self.params:              # peft gives the adapters the base's dtype: they train in fp32
            p.data = p.data.float()
        self.opt = make_optimizer(self.params, cfg)
        self.lr_sched = warmup_cosine(self.opt, cfg.lr_warmup, cfg.train_steps)
        self.unet, self.opt, self.lr_sched = accelerator.prepare(unet, self.opt, self.lr_sched)
        self.denoiser = accelerator.unwrap_model(self.unet)     # the plain module: LoRA state, validation grid
        if cfg.compile:          # the training forward and backward through torch.compile (inductor)
            self.unet = torch.compile(self.unet)
        feat_dim = cache.cond["cond"].shape[-1] + 4 * cache.x0.shape[1]
        self.ts = None if cfg.no_time_sampler else TimeSampler(feat_dim, num_particles=cfg.time_sampler_particles,
                                                               uniform_mix=cfg.time_sampler_uniform)
        self.ts_opt = None if self.ts is None else torch.optim.Adam(self.ts.parameters(), lr=cfg.time_sampler_lr)
        self.profile = LossProfile()
        self.gen = phase2_generator(seed, "batches", accelerator.process_index)
        self.gen_t = phase2_generator(seed, "timesteps", accelerator.process_index)
        self.gen_noise = phase2_generator(seed, "noise", accelerator.process_index)
        self.step = 0
        self.t_hist = torch.zeros(DIAG_BINS, dtype=torch.float64)     # timesteps drawn since the last diagnostics record
        self.ema: Optional[Dict[str, torch.Tensor]] = None
        self.ckpt_dir = os.path.join(cfg.work_dir, "checkpoint")
        self.log_path = os.path.join(cfg.work_dir, "log.csv")
        self.diagnostics_path = os.path.join(cfg.work_dir, "time_sampler.jsonl")

    # ------------------------------------------------------------ checkpointing
    def state(self) -> Dict:
        unwrapped = self.denoiser
        return {"step": self.step, "lora": lora_state(unwrapped), "opt": self.opt.state_dict(),
                "lr_sched": self.lr_sched.state_dict(), "gen": self.gen.get_state(),
                "gen_t": self.gen_t.get_state(), "gen_noise": self.gen_noise.get_state(),
                "ts": None if self.ts is None else self.ts.state_dict(),
                "ts_opt": None if self.ts_opt is None else self.ts_opt.state_dict(),
                "profile": self.profile.state_dict(), "ema": self.ema, "t_hist": self.t_hist,
                "fingerprint": self.cfg.fingerprint()}

    def save(self) -> None:
        if self.acc.is_main_process:
            save_checkpoint(self.ckpt_dir, self.state())
        self.acc.wait_for_everyone()

    def try_resume(self) -> bool:
        """Continue from the newest checkpoint that loads and applies (``checkpoint``, else
        ``checkpoint.prev``); False when there is none and the run starts over."""
        state = load_checkpoint(self.ckpt_dir, apply=self._apply_state)
        if state is None:                  # killed before the first checkpoint: the run starts over,
            if self.acc.is_main_process:   # and so do the rows it had logged
                drop_records_after(self.log_path, self.diagnostics_path, 0)
            return False
        if self.acc.is_main_process:
            drop_records_after(self.log_path, self.diagnostics_path, self.step)
        return True

    def _apply_state(self, state: Dict) -> None:
        """Set the trainer to a checkpoint's ``state``; a state that lacks a part or does not fit
        raises (``load_checkpoint`` then tries the previous checkpoint), another configuration's
        or an older version's is a ``ConfigError``."""
        if not self.cfg.matches_fingerprint(state["fingerprint"]):
            raise ConfigError(f"the checkpoint in {self.ckpt_dir} was made with a different configuration; "
                              f"resume with the same options or use another --work-dir")
        if "gen_t" not in state:
            raise ConfigError(f"the checkpoint in {self.ckpt_dir} was written by an older version whose random streams "
                              f"this version cannot continue exactly; delete that folder to train from the start")
        if set(state["lora"]) != set(lora_state(self.denoiser)):
            raise ValueError("its LoRA weights are not the ones of this model and configuration")
        set_peft_model_state_dict(self.denoiser, state["lora"])
        self.opt.load_state_dict(state["opt"])
        self.lr_sched.load_state_dict(state["lr_sched"])
        self.gen.set_state(state["gen"])
        self.gen_t.set_state(state["gen_t"])
        self.gen_noise.set_state(state["gen_noise"])
        if self.ts is not None:
            self.ts.load_state_dict(state["ts"])
            self.ts_opt.load_state_dict(state["ts_opt"])
        self.profile.load_state_dict(state["profile"])
        self.t_hist = state.get("t_hist", torch.zeros(DIAG_BINS, dtype=torch.float64)).to(torch.float64)
        self.ema = state["ema"]
        self.step = int(state["step"])

    def predict(self, net, x, t, cond):
        """The denoiser's prediction at ``x`` / ``t`` / ``cond`` through ``net``: the accelerate-wrapped
        module in training, the unwrapped one for the validation grid."""
        return self.model.denoise(x, t, cond, self.cfg.resolution, net=net)

    # ------------------------------------------------------------ one step
    def train_step(self) -> Dict[str, float]:
        """One optimizer step: ``grad_accum`` micro-batches of ``batch_size`` per process."""
        for _ in range(self.cfg.grad_accum):
            stats = self._micro_step()
        if self.cfg.ema_decay > 0:
            cur = lora_state(self.denoiser)
            if self.ema is None:
                self.ema = cur
            else:
                for k, v in cur.items():
                    self.ema[k].mul_(self.cfg.ema_decay).add_(v, alpha=1 - self.cfg.ema_decay)
        return stats

    def draw_timesteps(self, feats: Optional[torch.Tensor], B: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Timesteps ``t`` ``[B]`` (long) and importance weights ``w`` ``[B]`` of one micro-batch, from
        ``gen_t``: the Time Sampler's proposal for ``feats`` ``[B, F]`` (uniform during the warm-up,
        weight 1 when biased) or uniform timesteps, with the ``top_share`` of the batch at ``T - 1``."""
        cfg, T = self.cfg, self.model.schedule.num_timesteps
        if self.ts is not None and self.step >= cfg.time_sampler_warmup:
            t, w = self.ts.sample(feats, T, generator=self.gen_t)
            if cfg.time_sampler_biased:
                w = torch.ones_like(w)
        else:
            t, w = torch.randint(0, T, (B,), generator=self.gen_t), torch.ones(B)
        k = round(cfg.top_share * B)
        if k:       # eq. 7.4: a fixed share of the batch at the one-step sampler's timestep (t, w are fresh tensors)
            t[:k], w[:k] = T - 1, 1.0
        return t, w

    def features(self, idx: torch.Tensor) -> Optional[torch.Tensor]:
        """The Time Sampler's input for cache items ``idx`` ``[B]`` (None without a Time Sampler)."""
        if self.ts is None:
            return None
        feats = ts_features(self.cache.x0[idx], self.cache.cond["cond"][idx])
        return torch.zeros_like(feats) if self.cfg.time_sampler_input == "none" else feats   # "none": one density for all

    def noised_batch(self, idx: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, target, alpha_bar(t))`` of cache items ``idx`` at timesteps ``t`` (each ``[B]``): the
        Ray process's pair (``RayProcess.training_pair``, its noise from ``gen_noise``) or, for
        ``no_ray``, the ReFlow pair."""
        cfg, cache = self.cfg, self.cache
        x0 = cache.x0[idx]
        a = self.model.schedule.alpha_bar(t.double())
        noise = None if cfg.no_ray else torch.randn(x0.shape, generator=self.gen_noise)
        x_t, target = training_pair_of(self.model, self.process, cfg, x0, cache.eps_mu[idx], cache.noise[idx], t, noise)
        return x_t, target, a

    def weighted_loss(self, idx: torch.Tensor, t: torch.Tensor, w: torch.Tensor):
        """The minimised loss ``mean(w * lam * mse)`` (scalar) of cache items ``idx`` at timesteps ``t``
        with weights ``w`` (each ``[B]``), its per-sample ``lam * mse`` ``[B]`` and ``lam`` ``[B]``."""
        dev = self.acc.device
        x_t, target, _ = self.noised_batch(idx, t)
        cond = {k: v[idx].to(dev) for k, v in self.cache.cond.items()}
        pred = self.predict(self.unet, x_t.to(dev), t.to(dev), cond)
        # the weighted per-sample loss is the one minimised, so it is also what the Time Sampler sees
        lam = self.model.loss_weight(self.process, t, self.cfg.loss_weighting).float().to(dev)
        per_sample = lam * (pred.float() - target.to(dev)).pow(2).flatten(1).mean(1)
        return (w.to(dev) * per_sample).mean(), per_sample, lam

    def _micro_step(self) -> Dict[str, float]:
        """One micro-batch: draw items and timesteps, take the optimizer step on the weighted loss,
        then move the Time Sampler toward the updated loss profile."""
        B = self.cfg.batch_size
        idx = torch.randint(0, self.cache.x0.shape[0], (B,), generator=self.gen)
        feats = self.features(idx)
        t, w = self.draw_timesteps(feats, B)
        loss, per_sample, lam = self.optimizer_step(idx, t, w)
        self.update_time_sampler(feats, t, per_sample, lam)
        return {"loss": float(loss), "t_mean": float(t.float().mean()),
                "t_std": float(t.float().std()) if t.numel() > 1 else 0.0, "w_mean": float(w.mean()), "w_max": float(w.max())}

    def optimizer_step(self, idx: torch.Tensor, t: torch.Tensor, w: torch.Tensor):
        """Backward of the weighted loss of items ``idx`` at ``t`` / ``w`` (each ``[B]``), gradient
        clipping at 1.0, the LoRA optimizer's and LR schedule's step (under accelerate's gradient
        accumulation). Returns the loss (scalar) and, detached, the per-sample ``lam * mse`` and ``lam``."""
        with self.acc.accumulate(self.unet), self.acc.autocast():
            loss, per_sample, lam = self.weighted_loss(idx, t, w)
            self.acc.backward(loss)
            if self.acc.sync_gradients:
                self.acc.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.lr_sched.step()
            self.opt.zero_grad(set_to_none=True)
        return loss.detach(), per_sample.detach(), lam.detach()

    def update_time_sampler(self, feats: Optional[torch.Tensor], t: torch.Tensor, per_sample: torch.Tensor,
                            lam: torch.Tensor) -> None:
        """Feed the micro-batch's per-sample losses at timesteps ``t`` into the loss profile (gathered
        over processes, so every process keeps the same profile), count them in the diagnostics
        histogram, and take one SVGD step of the Time Sampler network on ``feats``."""
        T, dev = self.model.schedule.num_timesteps, self.acc.device
        u = (t.double() + 0.5) / T
        if self.acc.num_processes > 1:
            u = self.acc.gather(u.float().to(dev)).double().cpu()
            per_sample = self.acc.gather(per_sample).cpu()
            lam = self.acc.gather(lam).cpu()
        seen = per_sample.cpu()
        if self.cfg.time_sampler_target == "grad":   # sqrt(lam * l) = lam * sqrt(mse): the gradient norm's scale
            seen = (lam.cpu().reshape(-1) * seen).sqrt()
        self.profile.update(u, seen)
        self.t_hist += torch.histc(u.float(), DIAG_BINS, 0.0, 1.0).double()
        if self.ts is None:
            self._last_feats = None
            return
        self._last_feats = feats.detach()
        ts_loss = self.ts.svgd_loss(feats, self.profile.score)
        self.ts_opt.zero_grad(set_to_none=True)
        ts_loss.backward()
        if self.acc.num_processes > 1:      # data-parallel Time Sampler: average its gradients
            for p in self.ts.parameters():
                if p.grad is not None:
                    p.grad.copy_(self.acc.reduce(p.grad.to(dev), reduction="mean").to(p.grad.device))
        self.ts_opt.step()

    # ------------------------------------------------------------ loop
    def fit(self, progress: bool = True, snapshot=None) -> None:
        """Train to ``cfg.train_steps``; every ``cfg.save_every`` steps call ``snapshot(step)`` (the
        main process exports an intermediate LoRA)."""
        cfg = self.cfg
        new_log = not (cfg.resume and os.path.isfile(self.log_path))
        bar = tqdm(total=cfg.train_steps, initial=self.step, desc="phase 2: LoRA training", unit="step",
                   disable=not (progress and self.acc.is_main_process))
        main_proc = self.acc.is_main_process      # only the main process writes the records
        writer = Scalars(cfg.work_dir) if main_proc else None
        if new_log and main_proc:
            start_log(self.log_path)
        if snapshot is not None and cfg.save_every and 0 < self.step < cfg.train_steps \
                and self.step % cfg.save_every == 0 and main_proc:
            snapshot(self.step, missing_only=True)    # a kill between this checkpoint and its snapshot
        try:
            t0 = time.perf_counter()
            while self.step < cfg.train_steps:
                stats = self.train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
                if main_proc and (self.step % cfg.log_every == 0 or self.step == cfg.train_steps):
                    rate = cfg.batch_size * cfg.grad_accum * self.acc.num_processes * cfg.log_every / max(1e-9, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    row = [self.step, stats["loss"], self.lr_sched.get_last_lr()[0], stats["t_mean"], stats["t_std"],
                           stats["w_mean"], stats["w_max"], rate]
                    append_row(self.log_path, row)
                    writer.add(row, self.step)
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.train_steps:
                    self.record_diagnostics()
                    self.save()
                if snapshot is not None and cfg.save_every and self.step % cfg.save_every == 0 \
                        and self.step < cfg.train_steps and main_proc:
                    snapshot(self.step)
                if cfg.validate_every and self.step % cfg.validate_every == 0:
                    self.validation_grid(os.path.join(cfg.work_dir, f"validation_{self.step:06d}.png"))
        finally:                                  # the error line of a failed run starts on a line of its own
            bar.close()
        if writer is not None:
            writer.close()
        self.record_diagnostics()
        self.save()

    @torch.no_grad()
    def record_diagnostics(self) -> None:
        """Append the Time Sampler diagnostics at this step to ``<work_dir>/time_sampler.jsonl``:
        ``t_hist`` (timesteps drawn since the last record, ``DIAG_BINS`` bins of t / T), ``profile``
        (the loss profile's ``log sqrt E[l^2]`` on its bins) and ``density`` (the proposal's mass per
        bin, mean over the last batch; absent with uniform timesteps). A resumed run may repeat a
        step: read the last record of each step."""
        T = self.model.schedule.num_timesteps
        rec = {"step": self.step, "t_hist": self.t_hist.tolist(), "profile": self.profile.log_grid().tolist()}
        if self.ts is not None and getattr(self, "_last_feats", None) is not None:
            q = self.ts.proposal(self.ts(self._last_feats), T).mean(0)                     # [T]
            rec["density"] = torch.zeros(DIAG_BINS, dtype=torch.float64).index_add_(
                0, torch.arange(T) * DIAG_BINS // T, q).tolist()
        self.t_hist = torch.zeros(DIAG_BINS, dtype=torch.float64)
        if self.acc.is_main_process:
            append_record(self.diagnostics_path, rec)

    def final_lora(self) -> Dict[str, torch.Tensor]:
        return self.ema if self.ema is not None else lora_state(self.denoiser)

    @torch.no_grad()
    def validation_grid(self, path: str, n: int = 4) -> None:
        """Write the validation grid (``training/grid.py``) to ``path``: the teacher's cached sample
        first, then RayFlow at 1, 2 and 4 steps from the same noise (noise-mode target mean); one
        column per cached item, ``n`` items of distinct prompts where the cache has them, the prompt
        written under each column."""
        if not self.acc.is_main_process:
            return
        unet = self.denoiser
        was_training = unet.training
        unet.eval()
        pick = torch.linspace(0, len(self.cache.prompts) - 1, min(n, len(self.cache.prompts))).round().long()
        z = self.cache.noise[pick].to(self.acc.device)
        cond = {k: v[pick].to(self.acc.device) for k, v in self.cache.cond.items()}
        cfg = self.cfg
        rows = {f"teacher {cfg.teacher_solver} {cfg.teacher_steps} steps": self.model.decode(self.cache.x0[pick].to(self.acc.device))}
        for k in (1, 2, 4):
            x0 = self.model.ray_sample(unet, z, cond, self.process, k, cfg.resolution)
            rows[f"RayFlow {k} step{'s' if k > 1 else ''}"] = self.model.decode(x0)
        height = rows[next(iter(rows))].shape[-2]
        save_grid(rows, [self.cache.prompts[i] for i in pick.tolist()], path, scale=max(1, 96 // height))
        if was_training:
            unet.train()

