"""The interface of the five RayFlow nodes as data: node ids, display names, descriptions, inputs
(order, type, default, range, tooltip) and outputs.

No ComfyUI import: ``nodes/v3.py`` builds ComfyUI's V3 schemas (``comfy_api.latest.io``) from it,
and tools and tests that run without ComfyUI read the same declarations. Node ids, input names and
their order are what saved graphs and the shipped workflows refer to: keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from .lora_loader import lora_names

CATEGORY = "sampling/rayflow"
WIDGET_OPTIONS = ("default", "min", "max", "step", "round", "control_after_generate")


@dataclass(frozen=True)
class Input:
    """One node input. ``type`` is the ComfyUI io type; ``choices`` gives a COMBO's options when asked."""

    name: str
    type: str
    tooltip: str
    optional: bool = False
    default: Any = None
    min: Any = None
    max: Any = None
    step: Any = None
    round: Any = None
    control_after_generate: Optional[bool] = None
    choices: Optional[Callable[[], List[str]]] = None

    def widget_options(self) -> Dict[str, Any]:
        """default / min / max / step / round / control_after_generate, where set."""
        return {k: getattr(self, k) for k in WIDGET_OPTIONS if getattr(self, k) is not None}


@dataclass(frozen=True)
class Output:
    type: str
    tooltip: str
    name: Optional[str] = None          # shown on the socket; None shows the type


@dataclass(frozen=True)
class Node:
    node_id: str
    display_name: str
    description: str
    inputs: Tuple[Input, ...]
    outputs: Tuple[Output, ...]
    category: str = CATEGORY

    def input_types(self) -> Dict[str, Dict[str, tuple]]:
        """The inputs in the classic ``INPUT_TYPES`` form (a COMBO as its list of options), for tools
        that read node specs without ComfyUI."""
        out: Dict[str, Dict[str, tuple]] = {"required": {}}
        for i in self.inputs:
            typ = i.choices() if i.type == "COMBO" else i.type
            out.setdefault("optional" if i.optional else "required", {})[i.name] = (
                typ, {**i.widget_options(), "tooltip": i.tooltip})
        return out

    @property
    def return_types(self) -> Tuple[str, ...]:
        return tuple(o.type for o in self.outputs)


SIGMA = Input("sigma", "FLOAT", "Ray variance coefficient. 0 = use the value stored in the RayFlow LoRA "
                                "(0.3 without one). Only matters with eta > 0.",
              default=0.0, min=0.0, max=10.0, step=0.01)
ETA = Input("eta", "FLOAT", "-1 = the value stored in the RayFlow LoRA (1 for RayFlow LoRAs, 0 for fidelity / "
                            "no-Ray ones and without one); 0 = deterministic Ray steps; 1 = full stochastic Ray "
                            "posterior steps (fresh noise scaled by sigma). Same cost either way.",
            default=-1.0, min=-1.0, max=1.0, step=0.01)
SEED_MAX = 0xffffffffffffffff

SAMPLER = Node(
    "RayFlowSampler", "RayFlow Sampler",
    "Few-step sampling with a RayFlow LoRA, through ComfyUI's own sampling machinery.",
    inputs=(
        Input("model", "MODEL", "The model, with a RayFlow LoRA applied (RayFlow LoRA Loader or stock LoraLoader)."),
        Input("seed", "INT", "Seed of the initial noise (and of the stochastic steps).",
              default=0, min=0, max=SEED_MAX, control_after_generate=True),
        Input("steps", "INT", "Ray sampling steps: 1 is one-step generation (Algorithm 3); 2-8 are typical.",
              default=4, min=1, max=50),
        Input("cfg", "FLOAT", "Classifier-free guidance. RayFlow LoRAs bake the teacher's guidance in: keep 1.0 "
                              "(fastest, one model call per step).",
              default=1.0, min=0.0, max=100.0, step=0.1, round=0.01),
        Input("positive", "CONDITIONING", "What the image should contain."),
        Input("negative", "CONDITIONING", "What to avoid (used only when cfg > 1)."),
        Input("latent_image", "LATENT", "The latent to denoise: an Empty Latent Image, or an encoded image for "
                                        "img2img / inpainting."),
        Input("denoise", "FLOAT", "How much of the schedule to run; below 1 keeps part of the input latent (img2img).",
              default=1.0, min=0.0, max=1.0, step=0.01),
        SIGMA,
        ETA,
        Input("ray_target", "RAY_TARGET", "Instance-specific target mean from Ray Target Mean (same seed and latent). "
                                          "Without it the seeded noise is the target mean (free).", optional=True),
    ),
    outputs=(Output("LATENT", "The denoised latent."),),
)

SAMPLER_SELECT = Node(
    "RayFlowSamplerSelect", "RayFlow Sampler (SAMPLER)",
    "RayFlow's sampler for the custom-sampling nodes; pair it with RayFlow Scheduler. sigma 0 and the "
    "Ray path follow the RayFlow LoRA on the guider's model.",
    inputs=(
        SIGMA,
        ETA,
        Input("ray_target", "RAY_TARGET", "Target mean from Ray Target Mean (same seed and latent).", optional=True),
    ),
    outputs=(Output("SAMPLER", "The Ray sampler, for SamplerCustom / SamplerCustomAdvanced."),),
)

SCHEDULER = Node(
    "RayFlowScheduler", "RayFlow Scheduler (SIGMAS)",
    "Ray timestep schedule (starts at the last timestep, so 1 step is one-step generation).",
    inputs=(
        Input("model", "MODEL", "The model whose noise schedule the sigmas come from."),
        Input("steps", "INT", "Ray sampling steps.", default=4, min=1, max=50),
        Input("denoise", "FLOAT", "Fraction of the schedule to run (img2img below 1).",
              default=1.0, min=0.0, max=1.0, step=0.01),
    ),
    outputs=(Output("SIGMAS", "Ray noise levels: the model's sigmas at the trailing Ray timesteps, then 0."),),
)

TARGET_MEAN = Node(
    "RayFlowTargetMean", "Ray Target Mean",
    "Instance-specific target mean (RayFlow Theorem 1): the time-average of the model's noise "
    "predictions along a short deterministic probe from the seeded noise. "
    "Cost: probe_steps model evaluations per image (x2 with cfg > 1).",
    inputs=(
        Input("model", "MODEL", "The model to probe (the base model, or the model with the RayFlow LoRA)."),
        Input("seed", "INT", "Noise seed: use the same seed as the RayFlow Sampler.",
              default=0, min=0, max=SEED_MAX, control_after_generate=True),
        Input("probe_steps", "INT", "Deterministic probe steps. Costs probe_steps model evaluations per image "
                                    "(twice that with cfg > 1).",
              default=4, min=1, max=50),
        Input("cfg", "FLOAT", "Guidance during the probe (the base model usually wants 4-8).",
              default=1.0, min=0.0, max=100.0, step=0.1, round=0.01),
        Input("positive", "CONDITIONING", "Prompt conditioning."),
        Input("negative", "CONDITIONING", "Negative conditioning (used when cfg > 1)."),
        Input("latent_image", "LATENT", "The latent the RayFlow Sampler will denoise (same size and batch)."),
    ),
    outputs=(
        Output("RAY_TARGET", "Target mean for the RayFlow Sampler.", name="ray_target"),
        Output("LATENT", "The target mean itself as a latent (it looks like structured noise).", name="target_mean"),
        Output("LATENT", "The probe's own probe_steps-step sample, for inspection.", name="probe_sample"),
    ),
)

LORA_LOADER = Node(
    "RayFlowLoraLoader", "RayFlow LoRA Loader",
    "Applies a RayFlow LoRA and passes its settings (variance coefficient, path, recommended steps, "
    "cfg and eta) to the RayFlow nodes. Refuses LoRAs made for another model family, and damaged, "
    "partial or no-op files.",
    inputs=(
        Input("model", "MODEL", "The SD1.5 / SDXL / PixArt / SD3.5 / FLUX.1 model the RayFlow LoRA was trained for."),
        Input("lora_name", "COMBO", "A RayFlow LoRA (.safetensors) from models/loras, as written by "
                                    "python -m training.distill.", choices=lora_names),
        Input("strength", "FLOAT", "LoRA strength. RayFlow LoRAs are trained for 1.0.",
              default=1.0, min=-10.0, max=10.0, step=0.01),
        Input("min_coverage", "FLOAT", "The least fraction of the LoRA's layers that must fit this model. "
                                       "1.0 refuses partial or damaged files; lower it only to load such a file anyway.",
              default=1.0, min=0.0, max=1.0, step=0.01),
    ),
    outputs=(Output("MODEL", "The model with the RayFlow LoRA applied and its sampler settings attached."),),
)

NODES: Dict[str, Node] = {n.node_id: n for n in (SAMPLER, SAMPLER_SELECT, SCHEDULER, TARGET_MEAN, LORA_LOADER)}
