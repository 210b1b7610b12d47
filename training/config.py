"""Options of ``python -m training.distill``: one dataclass, one argparse flag per field.

A config file (``--config run.toml`` or ``.yaml``) may set any option; its keys are the flag
names (``lora_rank`` or ``lora-rank``). Flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from rayflow.lora_header import ARCH_NAMES, STEPS_RANGE
from rayflow.process import LOSS_WEIGHTINGS, PATHS

from .export import SAVE_DTYPES
from .flow_family import FAMILIES as FLOW_FAMILIES
from .quantize import QUANTIZED

ARCHITECTURES = ("auto", "sd15", "sdxl", "pixart_alpha", "pixart_sigma", *FLOW_FAMILIES)
SOLVERS = ("ddim", "dpmsolver++", "euler")      # ddim: VP models only; euler: flow models only
BASE_PRECISIONS = (*SAVE_DTYPES, *QUANTIZED)
OPTIMIZERS = ("adamw", "adamw8bit")
# LoRA targets: LCM-LoRA's set (attention, feed-forward, ResNet convs and time projections, resamplers)
# plus the UNet's first and last convolution; in PixArt only the transformer blocks' projections match.
# On the proxy, adding the convolutions to the attention/feed-forward set halved the 2-step FD-proxy
# in a single-seed run (docs/experiments.md).
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
LORA_TARGETS = ATTENTION_TARGETS + ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv",
                                    "upsamplers.0.conv", "conv_in", "conv_out")


# named recipes: option values a preset sets unless the option is given explicitly (docs/benchmarks.md
# has each preset's measured numbers)
DEFAULT_PRESET = "few-step"
PRESETS: Dict[str, Dict[str, Any]] = {
    # start anchoring (eq. 7.3): closer to the teacher than the paper's process at 1-8 steps on every
    # training seed of the fair benchmark (docs/benchmarks.md, "Fair headline"; docs/method.md section 9)
    "few-step": {"start_anchor": 0.5},
    # the paper's process as published (no start anchoring)
    "paper": {},
    "one-step": {"start_anchor": 0.5, "anchor_taper": True, "top_share": 0.75, "recommended_steps": 1},
    # ReFlow pairs without Ray noise: the measured best at reproducing the teacher's own samples
    # (FD to the teacher, 1-8 steps, 1200 and 2400 training steps, 5 seeds; docs/benchmarks.md)
    "fidelity": {"no_ray": True},
}


RAY_ONLY = ("start_anchor", "anchor_taper")     # preset options that --no-ray (ReFlow pairs) has no use for


def preset_options(preset: str, no_ray: bool = False) -> Dict[str, Any]:
    """The options the named ``preset`` sets (``PRESETS``); with ``no_ray``, without those of ``RAY_ONLY``:
    start anchoring moves the Ray target mean, which ReFlow pairs do not have."""
    return {k: v for k, v in PRESETS[preset].items() if not (no_ray and k in RAY_ONLY)}


class ConfigError(ValueError):
    """Bad option or config file; the CLI prints it as one line."""


@dataclass
class DistillConfig:
    # ---- inputs and outputs
    model: str = field(default="", metadata={"help": "base model: a diffusers folder, or a single-file SD1.5/SDXL .safetensors checkpoint (required)"})
    model_config: str = field(default="", metadata={"help": "for a single-file --model: a diffusers folder of the same family whose configs and tokenizers describe it (weights not needed); default: the bundled SD1.5/SDXL configs with ComfyUI's CLIP tokenizer (COMFYUI_PATH)"})
    prompts: str = field(default="", metadata={"help": "prompts file: .txt (one per line), .jsonl ({\"prompt\": ...}) or .csv (a 'prompt' column) (required)"})
    output: str = field(default="", metadata={"help": "output LoRA file (.safetensors) (required)"})
    work_dir: str = field(default="", metadata={"help": "folder for the phase-1 cache, checkpoints and logs (default: <output>.work)"})
    architecture: str = field(default="auto", metadata={"help": f"model family, one of {ARCHITECTURES}; auto detects it from the model"})
    # ---- phase 1: teacher trajectories (Algorithm 1, data construction)
    seeds_per_prompt: int = field(default=1, metadata={"help": "noise seeds per prompt (training pairs = prompts x seeds)"})
    seed: int = field(default=0, metadata={"help": "global seed: the teacher trajectories' noise, and phase 2 unless --train-seed is given"})
    train_seed: int = field(default=-1, metadata={"help": "seed of phase 2 alone (LoRA init, batch order, timesteps, Ray noise) on the same phase-1 data; -1 = --seed"})
    teacher_solver: str = field(default="dpmsolver++", metadata={"help": f"teacher ODE solver, one of {SOLVERS}: ddim or dpmsolver++ for SD1.5/SDXL/PixArt, euler (the SD3 / FLUX default) or dpmsolver++ (2nd order) for SD3 / FLUX"})
    teacher_steps: int = field(default=25, metadata={"help": "teacher solver steps"})
    teacher_cfg: float = field(default=4.5, metadata={"help": "classifier-free guidance scale baked into the pairs (1 = off)"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt for the teacher's CFG"})
    guidance: float = field(default=0.0, metadata={"help": "FLUX.1-dev only: the guidance embedding of the teacher and the student (0 = FLUX's 3.5; recorded in the LoRA as the FluxGuidance value to sample with)"})
    resolution: int = field(default=512, metadata={"help": "image resolution in pixels, a multiple of 8 (of the model's sample size for pixel-space models)"})
    shard_size: int = field(default=64, metadata={"help": "training pairs per cache shard"})
    # ---- phase 2: LoRA training
    train_steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "per-process batch size"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    lr_warmup: int = field(default=50, metadata={"help": "linear warm-up steps before cosine decay"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lora_rank: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=64.0, metadata={"help": "LoRA alpha (scale = alpha / rank)"})
    lora_targets: str = field(default=",".join(LORA_TARGETS),
                              metadata={"help": "comma-separated module-name suffixes that get LoRA adapters (default: attention, feed-forward, "
                                                "ResNet convolutions, time projections, resamplers, conv_in/conv_out; PixArt: those inside the transformer blocks)"})
    sigma: "float | str" = field(default="auto", metadata={"help": "Ray variance coefficient, or auto: the mean Theorem-1 spread sigma* of the teacher trajectories that phase 1 measures (on the proxy 0.099; over 3 seeds 0.1 beat 0.03 at 4-8 steps and 0.3 at 1-2 steps, docs/benchmarks.md); the value used is stored in the LoRA"})
    ray_path: str = field(default="sigma", metadata={"help": "Ray path shape: sigma or linear (docs/method.md section 2)"})
    no_ray: bool = field(default=False, metadata={"help": "ablation: ReFlow / Rectified-Diffusion pairs (x_t from z and x0_hat, target z) instead of the Ray process"})
    loss_weighting: str = field(default="truncated-snr", metadata={"help": "per-timestep loss weight (docs/method.md eq. 7.2): eps (plain noise-space MSE) or truncated-snr (max(1, (1-a_t)/a_t): x0-space error where the noise dominates, as in progressive distillation)"})
    start_anchor: float = field(default=0.0, metadata={"help": "centre the top of the Ray process on the seeded start point: blend the target mean toward the start's noise over this top fraction of the timesteps (docs/method.md eq. 7.3; 0 = the paper's process, 0.5 = linearly over the upper half; the default preset few-step sets 0.5, --preset paper leaves 0)"})
    anchor_taper: bool = field(default=False, metadata={"help": "with --start-anchor: scale the Ray noise by 1 - w(t), so at the top timestep the training input is the seeded start itself and the target the teacher's sample, the one-step map exactly (docs/method.md eq. 7.4)"})
    top_share: float = field(default=0.0, metadata={"help": "fraction of every batch trained at the top timestep T-1, the one-step sampler's only timestep, with weight 1; the rest from the Time Sampler (docs/method.md eq. 7.4; 0 = off)"})
    no_time_sampler: bool = field(default=False, metadata={"help": "ablation: uniform timesteps instead of the Time Sampler"})
    time_sampler_particles: int = field(default=32, metadata={"help": "Time Sampler particles per sample"})
    time_sampler_lr: float = field(default=1e-3, metadata={"help": "Time Sampler network learning rate"})
    time_sampler_target: str = field(default="loss", metadata={"help": "what the Time Sampler's density follows per timestep: loss (sqrt E[l^2] of the weighted loss l, Prop. 3) or grad (sqrt E[lambda^2 mse], proportional to the gradient norm of l)"})
    time_sampler_uniform: float = field(default=0.1, metadata={"help": "uniform share of the Time Sampler's proposal (bounds the importance weights by 1 / share)"})
    time_sampler_warmup: int = field(default=0, metadata={"help": "train on uniform timesteps for the first N steps while the Time Sampler learns the loss profile"})
    time_sampler_biased: bool = field(default=False, metadata={"help": "use the Time Sampler's timesteps with weight 1 (changes the objective toward the sampled timesteps) instead of unbiased importance weights"})
    time_sampler_input: str = field(default="data", metadata={"help": "the Time Sampler network's input: data (pooled latent and text features) or none (one density for every sample)"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (accelerate)"})
    compile: bool = field(default=False, metadata={"help": "run phase 2's forward and backward through torch.compile (inductor): the first steps compile the denoiser (minutes on a CPU); on the proxy's 2-core CPU step it is 1.15x faster (docs/benchmarks.md, 'Proxy step time')"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass to save memory"})
    base_precision: str = field(default="fp32", metadata={"help": "dtype the frozen base weights (denoiser, text encoders, VAE) are loaded in: fp32, fp16 or bf16 (half the memory); SD3 / FLUX also nf4 or int8 (QLoRA: the transformer's linear layers quantized by bitsandbytes, computing in bf16); the LoRA weights and the optimizer state stay fp32"})
    optimizer: str = field(default="adamw", metadata={"help": f"one of {OPTIMIZERS}: adamw (torch) or adamw8bit (bitsandbytes' 8-bit AdamW, the optimizer state in 2 bytes per LoRA weight instead of 8; needs pip install bitsandbytes)"})
    ema_decay: float = field(default=0.0, metadata={"help": "EMA decay of the LoRA weights exported (0 = off)"})
    checkpoint_every: int = field(default=200, metadata={"help": "save a resumable checkpoint every N steps"})
    save_every: int = field(default=0, metadata={"help": "also export the LoRA every N steps as <output>-step<N>.safetensors (0 = only the final file)"})
    validate_every: int = field(default=0, metadata={"help": "write a validation grid (teacher, then RayFlow at 1/2/4 steps; prompts under the columns) every N steps (0 = only at the end)"})
    log_every: int = field(default=10, metadata={"help": "log loss and Time Sampler statistics every N steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in work_dir"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output file that this run's work dir did not write "
                                                              "(without it such a file is never overwritten)"})
    preset: str = field(default=DEFAULT_PRESET, metadata={"help": f"named recipe, one of {', '.join(PRESETS)}: few-step (the default, 2-8 steps: the Ray process with start anchoring, --start-anchor 0.5), paper (the paper's process as published, no start anchoring), fidelity (--no-ray: ReFlow pairs, the closest to the teacher's own samples on the proxy, farther from real images) or one-step (start anchoring with the taper and three quarters of every batch at T-1: --start-anchor 0.5 --anchor-taper --top-share 0.75 --recommended-steps 1; give it 8x the prompts x seeds and 6x the steps of a few-step run, docs/experiments.md); options given explicitly win"})
    # ---- export metadata
    save_precision: str = field(default="fp32", metadata={"help": "dtype of the exported LoRA weights: fp32, fp16 or bf16 (half the file size)"})
    recommended_steps: int = field(default=4, metadata={"help": "default steps written into the LoRA metadata"})
    debug: bool = field(default=False, metadata={"help": "show tracebacks on errors"})

    # ------------------------------------------------------------------ validation
    def training_process(self):
        """The ``RayProcess`` phase 2 trains with: the Ray process of ``sigma`` / ``ray_path``, or for
        ``no_ray`` the DDPM process (``sigma = 1``) whose pairs are built from the seeded noise."""
        from rayflow import RayProcess

        if self.no_ray:
            return RayProcess(sigma=1.0)
        if self.sigma == "auto":
            raise ConfigError("--sigma auto is resolved from the phase-1 cache (resolve_sigma) before training")
        return RayProcess(sigma=self.sigma, path=self.ray_path)

    def resolve_sigma(self, sigma_star) -> "DistillConfig":
        """``--sigma auto``: the mean of the cache's Theorem-1 spreads ``sigma_star`` ``[N]``, to 4
        decimals (a value given explicitly is kept)."""
        if self.sigma == "auto":
            sigma = round(float(sigma_star.double().mean()), 4)
            if not 0 < sigma <= 10:
                raise ConfigError(f"--sigma auto: the mean Theorem-1 spread of the teacher trajectories is {sigma}, "
                                  f"outside (0, 10]; pass --sigma explicitly (0.1 on the proxy, docs/benchmarks.md)")
            self.sigma = sigma
        return self

    def phase2_seed(self) -> int:
        """The seed of phase 2's LoRA init and random streams: ``train_seed``, or ``seed`` when -1."""
        return self.seed if self.train_seed < 0 else self.train_seed

    def validate(self) -> "DistillConfig":
        for name in ("model", "prompts", "output"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.teacher_solver not in SOLVERS:
            raise ConfigError(f"--teacher-solver must be one of {', '.join(SOLVERS)}, got {self.teacher_solver!r}")
        if self.resolution <= 0 or self.resolution % 8:
            raise ConfigError(f"--resolution must be a positive multiple of 8, got {self.resolution}")
        if self.ray_path not in PATHS:
            raise ConfigError(f"--ray-path must be {' or '.join(PATHS)}, got {self.ray_path!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError(f"--loss-weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {self.loss_weighting!r}")
        if self.train_seed < -1:
            raise ConfigError(f"--train-seed must be >= 0 (or -1 for --seed), got {self.train_seed}")
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.sigma != "auto":
            try:
                self.sigma = float(self.sigma)
            except (TypeError, ValueError):
                raise ConfigError(f"--sigma must be a number or auto, got {self.sigma!r}") from None
            if not 0 < self.sigma <= 10:
                raise ConfigError(f"--sigma must be auto or in (0, 10], got {self.sigma}")
        elif self.teacher_steps < 2 and not self.no_ray:
            raise ConfigError("--sigma auto needs --teacher-steps 2 or more: Theorem 1's spread of a one-step "
                              "trajectory is 0; pass a number (--sigma 0.1) or more teacher steps")
        if not 0 <= self.start_anchor <= 1:
            raise ConfigError(f"--start-anchor must be in [0, 1], got {self.start_anchor}")
        if self.start_anchor > 0 and self.no_ray:
            raise ConfigError("--start-anchor changes the Ray target mean, which --no-ray does not use: give one of them")
        if self.anchor_taper and self.start_anchor == 0:
            raise ConfigError("--anchor-taper tapers the Ray noise where --start-anchor weighs the start point: give --start-anchor > 0")
        if not 0 <= self.top_share < 1:
            raise ConfigError(f"--top-share must be in [0, 1), got {self.top_share}")
        if self.time_sampler_target not in ("loss", "grad"):
            raise ConfigError(f"--time-sampler-target must be loss or grad, got {self.time_sampler_target!r}")
        if self.time_sampler_input not in ("data", "none"):
            raise ConfigError(f"--time-sampler-input must be data or none, got {self.time_sampler_input!r}")
        if not 0 < self.time_sampler_uniform <= 1:
            raise ConfigError(f"--time-sampler-uniform must be in (0, 1], got {self.time_sampler_uniform}")
        if self.time_sampler_warmup < 0:
            raise ConfigError(f"--time-sampler-warmup must be >= 0, got {self.time_sampler_warmup}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.base_precision not in BASE_PRECISIONS:
            raise ConfigError(f"--base-precision must be one of {', '.join(BASE_PRECISIONS)}, got {self.base_precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.save_precision not in SAVE_DTYPES:
            raise ConfigError(f"--save-precision must be one of {', '.join(SAVE_DTYPES)}, got {self.save_precision!r}")
        for name in ("seeds_per_prompt", "teacher_steps", "shard_size", "train_steps", "batch_size", "grad_accum",
                     "lora_rank", "time_sampler_particles", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.output.endswith(".safetensors"):
            raise ConfigError(f"--output must end in .safetensors, got {self.output!r}")
        if self.save_every < 0 or self.validate_every < 0:
            raise ConfigError("--save-every and --validate-every must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        self._validate_numbers()
        if not self.work_dir:
            self.work_dir = self.output[: -len(".safetensors")] + ".work"
        return self

    def _validate_numbers(self) -> None:
        """Finiteness and ranges of the optimiser and export numbers (a NaN passes every ``<`` test,
        so each bound is written as what the value must satisfy)."""
        positive = {"learning_rate": 1.0, "time_sampler_lr": 1.0, "lora_alpha": 1e6}
        for name, high in positive.items():
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= high):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number in (0, {high:g}], got {v!r}")
        for name, high in (("weight_decay", 10.0), ("teacher_cfg", 100.0), ("guidance", 100.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= high):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number in [0, {high:g}], got {v!r}")
        if self.lr_warmup < 0:
            raise ConfigError(f"--lr-warmup must be >= 0, got {self.lr_warmup}")
        low, high = STEPS_RANGE
        if not low <= self.recommended_steps <= high:
            raise ConfigError(f"--recommended-steps must be in [{low}, {high}] (the range the RayFlow LoRA Loader "
                              f"accepts), got {self.recommended_steps}")

    def fingerprint(self) -> Dict[str, Any]:
        """Options that must match for a resume to be meaningful (phase 1 and phase 2)."""
        keep = ("model", "model_config", "prompts", "architecture", "seeds_per_prompt", "seed", "train_seed", "teacher_solver", "teacher_steps",
                "teacher_cfg", "negative_prompt", "resolution", "shard_size", "batch_size", "grad_accum",
                "learning_rate", "lr_warmup", "weight_decay", "lora_rank", "lora_alpha", "lora_targets", "sigma",
                "ray_path", "no_ray", "loss_weighting", "start_anchor", "anchor_taper", "top_share", "no_time_sampler", "time_sampler_particles", "time_sampler_lr",
                "time_sampler_target", "time_sampler_uniform", "time_sampler_warmup", "time_sampler_biased", "time_sampler_input",
                "mixed_precision", "ema_decay", "base_precision", "optimizer", "guidance")
        d = {k: getattr(self, k) for k in keep}
        d["model"] = os.path.abspath(d["model"])
        d["prompts"] = os.path.abspath(d["prompts"])
        d["model_config"] = os.path.abspath(d["model_config"]) if d["model_config"] else ""
        return d

    def matches_fingerprint(self, old: Dict[str, Any]) -> bool:
        """Whether a checkpoint's ``fingerprint()`` allows resuming with this configuration. An option
        added to the fingerprint after the checkpoint was written matches at its default value."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        now = self.fingerprint()
        return {k: old.get(k, defaults[k]) for k in now} == now and set(old) <= set(now)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _help_text(f: dataclasses.Field) -> str:
    """A field's help plus ``(default: ...)``, left out where the help already says ``(required)`` or
    describes its own default; an empty-string default reads ``(default: empty)``."""
    text = f.metadata.get("help", "")
    if "(required)" in text or "default:" in text:
        return text
    return f"{text} (default: {'empty' if f.default == '' else repr(f.default)})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.distill", allow_abbrev=False,     # a typo is refused, as in a config file
        description="Distil a RayFlow LoRA from a base text-to-image model (phase 1: teacher trajectories and "
                    "Theorem-1 target means; phase 2: LoRA training with the Ray process and the Time Sampler). "
                    "Run under `accelerate launch` for several GPUs.")
    p.add_argument("--config", default=None, help="TOML or YAML file whose keys are these options")
    for f in dataclasses.fields(DistillConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = _help_text(f)
        if f.type in (bool, "bool"):
            p.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            p.add_argument(flag, dest=f.name, type=typ, default=None, help=help_text)
    return p


def _read_config_file(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                data = tomllib.load(f)
        elif path.endswith((".yaml", ".yml")):
            import yaml
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        else:
            raise ConfigError(f"config file must be .toml, .yaml or .yml: {path}")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of options")
    names = {f.name for f in dataclasses.fields(DistillConfig)}
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in names:
            raise ConfigError(f"unknown option {k!r} in config file {path}")
        out[key] = v
    return out


def parse_args(argv: Optional[List[str]] = None) -> DistillConfig:
    args = build_parser().parse_args(argv)
    values: Dict[str, Any] = {}
    if args.config:
        values.update(_read_config_file(args.config))
    for f in dataclasses.fields(DistillConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    preset = values.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    given = dict(values)
    arch = family_of(str(values.get("model", "")), str(values.get("architecture", "auto")))
    family = FLOW_FAMILIES[arch].defaults if arch in FLOW_FAMILIES else {}
    # the family's defaults, the preset's values, then the file's and the flags
    values = {**family, **preset_options(preset, bool(values.get("no_ray"))), **values}
    try:
        cfg = DistillConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    cfg.validate()
    cfg.notices = ignored_options(cfg, given)
    return cfg


def family_of(model: str, architecture: str = "auto") -> Optional[str]:
    """The architecture of ``model`` as far as it can be told before loading: ``--architecture`` when
    given, else a diffusers folder's (``training.models.detect_architecture``); None for a single file
    (SD1.5 / SDXL only) or a folder that does not read (the load reports that)."""
    from .models import ModelError, detect_architecture

    if architecture != "auto":
        return architecture
    if not os.path.isdir(model):
        return None
    try:
        return detect_architecture(model)
    except ModelError:
        return None


def check_family(cfg: DistillConfig) -> Optional[str]:
    """Before any work: refuse, in one sentence, an option the model's family cannot use (a VP-only
    option on SD3 / FLUX and the reverse, ``docs/method.md`` section 10), a family the trainer does not
    distil, or an nf4 / int8 base without bitsandbytes. Returns the architecture (None when unknown
    before loading); the flow families' LoRA targets replace the UNet default list."""
    from .flow_family import FLOW_LORA_TARGETS, option_errors
    from .models import ModelError, detect_architecture
    from .quantize import bitsandbytes_missing

    arch = family_of(cfg.model, cfg.architecture)
    if arch is None and os.path.isdir(cfg.model) and os.path.isfile(os.path.join(cfg.model, "model_index.json")):
        try:
            detect_architecture(cfg.model)          # an unsupported family: its one sentence
        except ModelError as exc:
            raise ConfigError(str(exc)) from None
    flow = arch in FLOW_FAMILIES
    errors = option_errors(arch or "", dataclasses.asdict(cfg), flow, ARCH_NAMES.get(arch or "", "this model"))
    if errors:
        raise ConfigError(errors[0])
    missing = bitsandbytes_missing(cfg.base_precision)
    if missing:
        raise ConfigError(missing)
    if flow and cfg.lora_targets == ",".join(LORA_TARGETS):
        cfg.lora_targets = ",".join(FLOW_LORA_TARGETS)
    return arch


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def ignored_options(cfg: DistillConfig, given: Dict[str, Any]) -> List[str]:
    """One sentence per option in ``given`` (the flags and config-file keys set explicitly) that
    ``cfg`` does not use."""
    unused = []
    if cfg.no_time_sampler:
        unused += [(k, "--no-time-sampler (uniform timesteps)") for k in given if k.startswith("time_sampler_")]
    if cfg.no_ray:
        unused += [(k, "--no-ray (no Ray noise is drawn)") for k in ("sigma", "ray_path") if k in given]
    if given.get("model_config") and os.path.isdir(cfg.model):
        unused.append(("model_config", "a diffusers-folder --model (it has its own configs)"))
    if cfg.validate_every and cfg.validate_every >= cfg.train_steps and "validate_every" in given:
        unused.append(("validate_every", f"--train-steps {cfg.train_steps} (only the final grid is written)"))
    if cfg.save_every and cfg.save_every >= cfg.train_steps and "save_every" in given:
        unused.append(("save_every", f"--train-steps {cfg.train_steps} (only the final LoRA is written)"))
    return [f"{_flag(key)} is ignored with {why}" for key, why in unused]
