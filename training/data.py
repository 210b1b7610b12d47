"""Phase 1 of Algorithm 1: teacher trajectories, Theorem-1 target means, and the pair cache.

For every (prompt, seed) item: draw ``z ~ N(0, I)`` from a per-item seed, run the teacher ODE
solver (diffusers DDIM or DPM-Solver++, "trailing" timesteps so it starts at ``T - 1`` from
``z`` exactly as inference does) with classifier-free guidance, record the guided noise
predictions, and keep ``x0_hat``, ``eps_mu`` (``RayProcess.theorem1``), ``sigma*``, ``z`` and the
text conditioning. Text encoders run only here.

The cache is a folder of safetensors shards written atomically (temp file + rename) plus a
``manifest.json``; a killed run resumes by skipping complete shards. Items are deterministic
functions of ``(seed, item index)``, so a resumed cache is identical to an uninterrupted one.
Under ``accelerate launch`` shard ``k`` is built by process ``k mod num_processes``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from safetensors import safe_open

from rayflow import FLOW, RayProcess
from rayflow.atomic_write import write_json

from .config import ConfigError, DistillConfig
from .export import save_atomic
from .flow_teacher import flow_teacher_trajectory
from .models import BaseModel

CACHE_VERSION = 2


def phase1_fingerprint(cfg: DistillConfig, num_prompts: int, model_metadata: Optional[Dict] = None) -> Dict:
    """What the cache depends on; ``model_metadata`` (a flow model's shift and guidance) joins it when given."""
    keys = ("seeds_per_prompt", "seed", "teacher_solver", "teacher_steps", "teacher_cfg", "negative_prompt",
            "resolution", "shard_size", "ray_path")
    fp = {k: getattr(cfg, k) for k in keys}
    fp.update(model=os.path.abspath(cfg.model), num_prompts=num_prompts, version=CACHE_VERSION, **(model_metadata or {}))
    return fp


def cache_dir(cfg: DistillConfig) -> str:
    return os.path.join(cfg.work_dir, "cache")


def item_noise(seed: int, index: torch.Tensor, shape) -> torch.Tensor:
    """Initial noise of items ``index`` ``[n]`` -> ``[n, *shape]``, each from its own generator."""
    out = torch.empty((len(index), *shape))
    for j, i in enumerate(index.tolist()):     # one generator per item keeps items independent of batching
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[j] = torch.randn(shape, generator=g)
    return out


def make_teacher_scheduler(model: BaseModel, solver: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cfg = dict(num_train_timesteps=model.schedule.num_timesteps, trained_betas=model.schedule.betas.float().tolist(),
               prediction_type="epsilon")
    if solver == "ddim":
        return DDIMScheduler(**cfg, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    return DPMSolverMultistepScheduler(**cfg, algorithm_type="dpmsolver++", solver_order=2,
                                       timestep_spacing="trailing", final_sigmas_type="zero")


@torch.no_grad()
def teacher_trajectory(model: BaseModel, z: torch.Tensor, cond: Dict[str, torch.Tensor],
                       uncond: Dict[str, torch.Tensor], solver: str, steps: int, cfg_scale: float, resolution: int):
    """Run the teacher from ``z`` ``[n, C, H, W]`` with conditioning ``cond`` / ``uncond`` (dicts of
    ``[n, ...]`` tensors, :meth:`BaseModel.encode_prompts`). Returns ``x0_hat``, the guided noise
    predictions ``[K, n, C, H, W]`` and ``alpha_bar`` at each prediction ``[K]``. Flow models (a
    ``FlowSchedule``) run ``flow_teacher_trajectory``, which returns the same triple (eq. 10.6)."""
    if model.schedule.interpolation is FLOW:
        return flow_teacher_trajectory(model, z, cond, uncond, solver, steps, cfg_scale, resolution)
    sched = make_teacher_scheduler(model, solver)
    sched.set_timesteps(steps)
    x = z.clone()
    preds, alphas = [], []
    n = z.shape[0]
    for t in sched.timesteps:
        t_in = torch.full((n,), int(t), dtype=torch.long, device=z.device)
        if cfg_scale != 1.0:
            both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
            eps = model.denoise(torch.cat([x, x]), torch.cat([t_in, t_in]), both, resolution).float()
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + cfg_scale * (eps_c - eps_u)
        else:
            eps = model.denoise(x, t_in, cond, resolution).float()
        preds.append(eps.float())
        alphas.append(model.schedule.alphas_cumprod[int(t)])
        x = sched.step(eps, t, x).prev_sample
    return x.float(), torch.stack(preds), torch.stack(alphas)


@dataclass
class Cache:
    x0: torch.Tensor        # [N, C, H, W] teacher outputs
    eps_mu: torch.Tensor    # [N, C, H, W] Theorem-1 target means
    noise: torch.Tensor     # [N, C, H, W] initial noise z
    cond: Dict[str, torch.Tensor]  # "cond" [N, L, D] text conditioning (+ "pooled" [N, P] SDXL, "mask" [N, L] PixArt)
    sigma_star: torch.Tensor  # [N] Theorem-1 spread
    prompts: List[str]


def build_cache(cfg: DistillConfig, model: BaseModel, prompts: List[str], accelerator, progress: bool = True) -> str:
    """Build (or finish) the phase-1 cache; returns its folder."""
    from tqdm.auto import tqdm

    folder = cache_dir(cfg)
    os.makedirs(folder, exist_ok=True)
    fp = phase1_fingerprint(cfg, len(prompts), model.metadata())
    manifest = os.path.join(folder, "manifest.json")
    old = _read_manifest(manifest, accelerator.is_main_process)
    if old is not None:
        if old.get("fingerprint") != fp:
            raise ConfigError(f"the cache in {folder} was built with a different configuration; "
                              f"use another --work-dir or delete that folder")
    elif accelerator.is_main_process:
        write_json(manifest, {"fingerprint": fp, "complete": False})
    accelerator.wait_for_everyone()

    device = accelerator.device
    model.unet.to(device)
    for enc in model.text_encoders:
        enc.to(device)
    C, H = model.latent_channels, model.latent_size(cfg.resolution)
    total = len(prompts) * cfg.seeds_per_prompt
    n_shards = (total + cfg.shard_size - 1) // cfg.shard_size
    process = RayProcess(sigma=1.0, path=cfg.ray_path)     # Theorem 1 depends on the path, not on sigma
    uncond_one = model.encode_prompts([cfg.negative_prompt], device)
    mine = [k for k in range(n_shards) if k % accelerator.num_processes == accelerator.process_index]
    sizes = (old or {}).get("sizes", {})
    todo = [k for k in mine if not _shard_ok(folder, k, cfg.shard_size, total, sizes.get(str(k)))]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="phase 1: teacher trajectories",
               unit="shard", disable=not (progress and accelerator.is_main_process))
    try:
        for k in todo:
            idx = _shard_items(k, cfg.shard_size, total)
            texts = [prompts[int(i) // cfg.seeds_per_prompt] for i in idx]
            cond = model.encode_prompts(texts, device)
            z = item_noise(cfg.seed, idx, (C, H, H)).to(device)
            uncond = {k2: v.expand(len(idx), *v.shape[1:]) for k2, v in uncond_one.items()}
            x = z.to(model.dtype)
            x0, preds, alphas = teacher_trajectory(model, x, cond, uncond, cfg.teacher_solver, cfg.teacher_steps,
                                                   cfg.teacher_cfg, cfg.resolution)
            eps_mu, sigma_star = process.theorem1(preds, alphas)
            tensors = {"x0": x0, "eps_mu": eps_mu.float(), "noise": z.float(), "sigma_star": sigma_star.float(),
                       "index": idx, **{f"cond.{k2}": v.float() for k2, v in cond.items()}}
            save_atomic({k2: v.detach().cpu().contiguous() for k2, v in tensors.items()}, _shard_path(folder, k),
                         {"prompts": json.dumps(texts)})
            bar.update(1)
    finally:                      # the error line of a failed run starts on a line of its own
        bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(manifest, {"fingerprint": fp, "complete": True, "items": total, "shards": n_shards,
                                "sizes": {str(k): os.path.getsize(_shard_path(folder, k)) for k in range(n_shards)}})
    accelerator.wait_for_everyone()
    return folder


def load_cache(folder: str) -> Cache:
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if not manifest.get("complete"):
        raise ConfigError(f"the phase-1 cache in {folder} is incomplete")
    parts: Dict[str, List[torch.Tensor]] = {}
    prompts: List[str] = []
    for k in range(manifest["shards"]):
        try:
            with safe_open(_shard_path(folder, k), framework="pt") as f:
                for name in f.keys():
                    parts.setdefault(name, []).append(f.get_tensor(name))
                prompts += json.loads(f.metadata()["prompts"])
        except Exception as exc:  # damaged after phase 1 verified it
            raise ConfigError(f"the phase-1 cache shard {_shard_path(folder, k)} does not load ({type(exc).__name__}); "
                              f"run the same command again to rebuild it") from None
    cat = {k: torch.cat(v) for k, v in parts.items()}
    if not torch.equal(cat["index"], torch.arange(manifest["items"])):
        raise ConfigError(f"the phase-1 cache in {folder} is inconsistent (missing or duplicated items)")
    cond = {k[len("cond."):]: v for k, v in cat.items() if k.startswith("cond.")}
    return Cache(cat["x0"], cat["eps_mu"], cat["noise"], cond, cat["sigma_star"], prompts)


def _shard_path(folder: str, k: int) -> str:
    return os.path.join(folder, f"shard_{k:05d}.safetensors")


def _shard_items(k: int, shard_size: int, total: int) -> torch.Tensor:
    """The item indices of shard ``k`` ``[<= shard_size]``."""
    return torch.arange(k * shard_size, min(total, (k + 1) * shard_size))


def _read_manifest(path: str, main: bool):
    """The cache manifest, or None when it is absent or does not parse (then the shards, which
    verify on their own, are checked and the manifest is written again)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and "fingerprint" in data:
            return data
    except (OSError, ValueError):
        pass
    if main:             # the main process mends it; the others read it as absent
        print(f"note: the phase-1 manifest {path} is damaged; checking the shards and writing it again", flush=True)
        os.remove(path)
    return None


def _shard_ok(folder: str, k: int, shard_size: int, total: int, size) -> bool:
    """Whether shard ``k`` is there and complete: its byte size as recorded (when the manifest has
    it), a header that parses, and the ``index`` tensor of exactly its items. A damaged shard is
    named, removed and rebuilt (the cache is derivable from the teacher)."""
    path = _shard_path(folder, k)
    if not os.path.isfile(path):
        return False
    expected = _shard_items(k, shard_size, total)
    try:
        if size is not None and os.path.getsize(path) != size:
            raise ValueError(f"{os.path.getsize(path)} bytes, the manifest recorded {size}")
        with safe_open(path, framework="pt") as f:
            ok = torch.equal(f.get_tensor("index"), expected) and "x0" in f.keys() and "prompts" in (f.metadata() or {})
        if not ok:
            raise ValueError("its items are not the ones of this shard")
    except Exception as exc:  # any reader error: truncated, garbage, wrong content
        print(f"note: the phase-1 cache shard {path} is damaged ({type(exc).__name__}: {str(exc)[:100]}); rebuilding it",
              flush=True)
        os.remove(path)
        return False
    return True


