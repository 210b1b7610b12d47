"""``python -m training.distill``: distil a RayFlow LoRA from a base text-to-image model.

Phase 1 builds (or resumes) the cache of teacher trajectories and Theorem-1 target means,
phase 2 trains (or resumes) the LoRA, and the result is exported as one ``.safetensors`` file
(``docs/lora-format.md``). ``python -m training.distill --help`` documents every option; run it
under ``accelerate launch`` to use several GPUs.

Errors end the run with one line on stderr and a non-zero exit code (2 for bad input, 1 for
anything unexpected); ``--debug`` adds the traceback. The output file is written atomically at the
very end, so a failed or interrupted run never leaves a partial LoRA behind.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Callable, Dict, List, Optional

from rayflow.atomic_write import DiskFullError, write_json, write_text

from .config import ConfigError, DistillConfig, check_family, parse_args
from .models import ModelError
from .prompts import PromptsError

# errors that end the run with one line and exit code 2: bad input, or a disk that filled up
INPUT_ERRORS = (ConfigError, ModelError, PromptsError, DiskFullError)


def _check_output_writable(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--output is a folder, expected a .safetensors file path: {path}")
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"output location is not writable: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"output location is not writable: {parent}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"output file exists and is not writable: {path}")


EXPORTS = "exports.json"     # in the work dir: the SHA-256 of every --output file this run wrote


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _own_exports(work_dir: str) -> Dict[str, List[str]]:
    """``{absolute path: [SHA-256 of each version this work dir wrote there]}`` (older records: one hash)."""
    try:
        with open(os.path.join(work_dir, EXPORTS), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: [v] if isinstance(v, str) else [h for h in v if isinstance(h, str)] if isinstance(v, list) else []
            for k, v in data.items()}


def snapshot_path(output: str, step: int) -> str:
    """``<output stem>-step<step>.safetensors``: the intermediate LoRA of ``--save-every``."""
    return f"{output[:-len('.safetensors')]}-step{step:06d}.safetensors"


def planned_files(cfg: DistillConfig) -> List[str]:
    """The files a run writes beside ``--output``: its ``--save-every`` snapshots and the LoRA itself."""
    steps = range(cfg.save_every, cfg.train_steps, cfg.save_every) if cfg.save_every else ()
    return [*(snapshot_path(cfg.output, s) for s in steps), cfg.output]


def _check_outputs_are_ours(cfg: DistillConfig) -> None:
    """An existing ``--output`` or snapshot is replaced only when this work dir wrote it (its hash is
    in ``<work_dir>/exports.json``) or with ``--overwrite``; checked before any work."""
    own = _own_exports(cfg.work_dir)
    theirs = []
    for path in planned_files(cfg):
        if os.path.isdir(path):
            raise ConfigError(f"{path} is a folder, but this run writes a LoRA file there; move it or choose another --output")
        if not cfg.overwrite and os.path.isfile(path) and _sha256(path) not in own.get(os.path.abspath(path), []):
            theirs.append(path)
    if theirs:
        more = f" (nor {len(theirs) - 1} more of the files it would write)" if len(theirs) > 1 else ""
        raise ConfigError(f"{theirs[0]} already exists and this run (work dir {cfg.work_dir}) did not write it{more}; "
                          f"pass --overwrite to replace it, or choose another --output")


def _record_export(cfg: DistillConfig, path: str, written: str) -> None:
    """Record the file ``written`` (the complete temp file about to become ``path``) as this work
    dir's, before the rename: a kill between the two leaves the file known as ours."""
    exports = _own_exports(cfg.work_dir)
    digest, key = _sha256(written), os.path.abspath(path)
    exports[key] = [h for h in exports.get(key, []) if h != digest][-7:] + [digest]
    write_json(os.path.join(cfg.work_dir, EXPORTS), exports)


def run(cfg: DistillConfig, progress: bool = True, on_snapshot: Optional[Callable[[str, int], None]] = None) -> str:
    """Run both phases and export; returns the LoRA path. Raises the errors of ``INPUT_ERRORS``.

    ``on_snapshot(path, step)`` is called after each ``--save-every`` LoRA snapshot is written."""
    import torch
    from accelerate import Accelerator

    from .data import build_cache, load_cache
    from .export import SAVE_DTYPES, export_state_dict, lora_metadata, write_lora
    from .models import load_base_model
    from .prompts import read_prompts
    from .trainer import Trainer, check_optimizer

    cfg.validate()
    check_optimizer(cfg)
    check_family(cfg)
    prompts = read_prompts(cfg.prompts)
    _check_output_writable(cfg.output)
    _check_outputs_are_ours(cfg)
    if not cfg.resume and os.path.isdir(os.path.join(cfg.work_dir, "checkpoint")):
        raise ConfigError(f"{cfg.work_dir} already holds a training checkpoint: pass --resume to continue it, "
                          f"or choose another --work-dir")
    model = load_base_model(cfg.model, cfg.architecture, dtype=SAVE_DTYPES.get(cfg.base_precision, torch.bfloat16),
                            model_config=cfg.model_config, resolution=cfg.resolution,
                            base_precision=cfg.base_precision, guidance=cfg.guidance)
    res = model.unet.config.sample_size if model.vae is None else None   # pixel-space (proxy) models
    if res is not None and cfg.resolution != res:
        raise ConfigError(f"--resolution must be {res} for this pixel-space model (its UNet sample size), got {cfg.resolution}")
    if model.architecture.startswith("flux") and model.latent_size(cfg.resolution) % 2:
        raise ConfigError(f"FLUX packs 2x2 latent patches: --resolution must be a multiple of "
                          f"{2 * cfg.resolution // model.latent_size(cfg.resolution)}, got {cfg.resolution}")

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    os.makedirs(cfg.work_dir, exist_ok=True)
    if accelerator.is_main_process:
        write_text(os.path.join(cfg.work_dir, "config.json"), cfg.to_json())
    folder = build_cache(cfg, model, prompts, accelerator, progress)
    cache = load_cache(folder)
    auto = cfg.sigma == "auto"
    cfg.resolve_sigma(cache.sigma_star)
    if progress and accelerator.is_main_process:
        print(f"phase 1: Theorem-1 spread sigma* of the teacher trajectories: mean {cache.sigma_star.mean():.3f}, "
              f"median {cache.sigma_star.median():.3f} (training with --sigma {cfg.sigma}"
              f"{', the mean: --sigma auto' if auto else ''})", flush=True)
    for enc in model.text_encoders:          # phase 2 never needs the text encoders (PixArt's T5 is large)
        enc.to("cpu")
    enc = None                               # the loop name held the last encoder through phase 2
    model.text_encoders.clear()
    model.tokenizers.clear()
    trainer = Trainer(cfg, model, cache, accelerator)
    if cfg.resume:
        trainer.try_resume()
    metadata = lora_metadata(cfg, model.architecture, model.schedule_name, model.schedule.num_timesteps,
                             trainer.process, model.metadata())

    def export(path: str, steps: int) -> None:
        lora = export_state_dict(model.architecture, trainer.final_lora(), cfg.lora_rank, cfg.lora_alpha,
                                 cfg.save_precision)
        write_lora(path, lora, {**metadata, "rayflow.train_steps": steps},
                   before_rename=lambda tmp: _record_export(cfg, path, tmp))

    def snapshot(step: int, missing_only: bool = False) -> None:
        path = snapshot_path(cfg.output, step)
        if missing_only and os.path.isfile(path):
            return
        export(path, step)
        if on_snapshot is not None:
            on_snapshot(path, step)

    trainer.fit(progress, snapshot=snapshot)
    if accelerator.is_main_process:
        trainer.validation_grid(os.path.join(cfg.work_dir, "validation_final.png"))
        export(cfg.output, cfg.train_steps)
    accelerator.wait_for_everyone()
    return cfg.output


def main(argv: Optional[List[str]] = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
        for note in getattr(cfg, "notices", []):
            print(f"note: {note}", file=sys.stderr)
        run(cfg)
        return 0
    except INPUT_ERRORS as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # anything unexpected: one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
