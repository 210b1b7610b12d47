"""The flow-matching families the trainer distils (SD3 / SD3.5, FLUX.1-dev, FLUX.1-schnell): how a
diffusers folder names them, what they load, their defaults, and the options that do not fit them.

Pure data and checks (no torch, no ConfigError: the callers in ``config.py`` and ``models.py`` raise
their own errors with the sentences returned here). ``docs/method.md`` section 10 has the math.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

# the transformer-block projections that get LoRA adapters (inside transformer_blocks / single_transformer_blocks):
# attention of the image and text streams, both feed-forwards, and FLUX's single-block MLP / output projections
FLOW_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                     "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")
FLOW_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")


@dataclass(frozen=True)
class FlowFamily:
    """One flow family: ``encoders`` lists ``(text encoder folder, transformers class, tokenizer folder)``
    in the pipeline's order; ``t5_length`` is the T5 sequence length the pipeline uses; ``defaults``
    are the ``DistillConfig`` values the family brings unless an option is given."""
    arch: str
    name: str
    pipeline: str
    transformer: str
    encoders: Tuple[Tuple[str, str, str], ...]
    t5_length: int
    guidance: bool
    defaults: Dict[str, object] = field(default_factory=dict)


_COMMON = {"resolution": 1024, "teacher_solver": "euler", "lora_targets": ",".join(FLOW_LORA_TARGETS)}
FAMILIES: Dict[str, FlowFamily] = {f.arch: f for f in (
    FlowFamily("sd3", "SD3 / SD3.5", "StableDiffusion3Pipeline", "SD3Transformer2DModel",
               (("text_encoder", "CLIPTextModelWithProjection", "tokenizer"),
                ("text_encoder_2", "CLIPTextModelWithProjection", "tokenizer_2"),
                ("text_encoder_3", "T5EncoderModel", "tokenizer_3")), 256, False,
               {**_COMMON, "teacher_steps": 28, "teacher_cfg": 4.5, "recommended_steps": 4}),
    FlowFamily("flux_dev", "FLUX.1-dev", "FluxPipeline", "FluxTransformer2DModel",
               (("text_encoder", "CLIPTextModel", "tokenizer"), ("text_encoder_2", "T5EncoderModel", "tokenizer_2")),
               512, True, {**_COMMON, "teacher_steps": 28, "teacher_cfg": 1.0, "recommended_steps": 4}),
    FlowFamily("flux_schnell", "FLUX.1-schnell", "FluxPipeline", "FluxTransformer2DModel",
               (("text_encoder", "CLIPTextModel", "tokenizer"), ("text_encoder_2", "T5EncoderModel", "tokenizer_2")),
               256, False, {**_COMMON, "teacher_steps": 4, "teacher_cfg": 1.0, "recommended_steps": 2}),
)}
FLUX_GUIDANCE = 3.5            # FLUX.1-dev's usual embedded guidance (diffusers' FluxPipeline default)
# families a user may point --model at that this trainer does not distil, by pipeline or transformer class
UNSUPPORTED = {"Flux2": "FLUX.2", "QwenImage": "Qwen-Image", "Wan": "Wan (a video model)",
               "HunyuanVideo": "HunyuanVideo (a video model)", "CogVideoX": "CogVideoX (a video model)",
               "LTX": "LTX-Video (a video model)", "Mochi": "Mochi (a video model)", "AuraFlow": "AuraFlow",
               "Lumina": "Lumina", "Sana": "Sana", "HiDream": "HiDream", "Chroma": "Chroma", "Cosmos": "Cosmos",
               "StableDiffusion3Img2Img": "the SD3 img2img pipeline"}
SUPPORTED = "SD1.5, SDXL, PixArt-alpha/-sigma, SD3 / SD3.5 and FLUX.1-dev / -schnell"


def read_json(path: str) -> dict:
    """A JSON object file's content, {} when it is missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def detect_flow_family(path: str, index: dict) -> Tuple[Optional[str], Optional[str]]:
    """``(arch, None)`` for an SD3 / FLUX.1 diffusers folder, ``(None, why)`` for a family this trainer
    does not distil (FLUX.2, Qwen-Image, video models, ...), ``(None, None)`` for anything else."""
    transformer = read_json(os.path.join(path, "transformer", "config.json"))
    names = (str(index.get("_class_name", "")), str(transformer.get("_class_name", "")))
    for key, label in UNSUPPORTED.items():
        if any(n.startswith(key) for n in names):
            return None, (f"{label} ({names[0] or names[1]}) is not a family this trainer distils; "
                          f"supported: {SUPPORTED}")
    if "SD3Transformer2DModel" in names or names[0] == "StableDiffusion3Pipeline":
        return "sd3", None
    if "FluxTransformer2DModel" in names or names[0] == "FluxPipeline":
        return ("flux_dev" if transformer.get("guidance_embeds", True) else "flux_schnell"), None
    return None, None


def option_errors(arch: str, values: Dict[str, object], is_flow: bool, name: str) -> list:
    """One sentence per option in ``values`` (the run's settings) that the family ``arch`` (display
    ``name``; ``is_flow``: a flow family) cannot use: VP-only options on flow models and the reverse."""
    errors = []
    solver, guidance = values.get("teacher_solver"), float(values.get("guidance") or 0.0)
    base = values.get("base_precision")
    if is_flow:
        if values.get("ray_path") == "linear":
            errors.append(f"--ray-path linear is a path of the epsilon (VP) models; {name} is a flow-matching model, "
                          f"whose Ray process is the flow path (docs/method.md eq. 10.2): leave --ray-path at sigma")
        if solver == "ddim":
            errors.append(f"--teacher-solver ddim is for epsilon (VP) models; {name} takes euler or dpmsolver++")
        if arch.startswith("flux") and float(values.get("teacher_cfg", 1.0)) != 1.0:
            errors.append(f"{name} is guidance-distilled: --teacher-cfg must be 1"
                          + (" (its guidance embedding is --guidance)" if arch == "flux_dev" else ""))
        if guidance and arch != "flux_dev":
            errors.append(f"--guidance sets FLUX.1-dev's guidance embedding; {name} has none"
                          + (" (its teacher uses classifier-free guidance: --teacher-cfg)" if arch == "sd3" else ""))
    else:
        if solver == "euler":
            errors.append(f"--teacher-solver euler is for flow-matching models; {name} takes ddim or dpmsolver++")
        if guidance:
            errors.append(f"--guidance sets FLUX.1-dev's guidance embedding; {name} has none "
                          f"(its teacher uses classifier-free guidance: --teacher-cfg)")
        if base in ("nf4", "int8"):
            errors.append(f"--base-precision {base} quantizes the transformer of SD3 / FLUX.1 models; "
                          f"for {name} use bf16 or fp16")
    return errors
