"""The five RayFlow nodes on ComfyUI's V3 schema (``comfy_api.latest``), defined as ComfyUI's own
``comfy_extras`` define theirs: ``io.ComfyNode`` classes with ``define_schema`` and an ``execute``
classmethod, listed by a ``ComfyExtension`` that ``comfy_entrypoint`` returns.

Imported only by ``nodes.comfy_entrypoint``, so only inside ComfyUI. The schemas are built from the
declarations in ``nodes/schema.py``; ``execute`` translates nothing but the return value and calls
``nodes/sampling.py`` and ``nodes/lora_loader.py``.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import lora_loader, sampling
from .schema import NODES, Input

RayTarget = io.Custom("RAY_TARGET")
IO_TYPES = {"MODEL": io.Model, "INT": io.Int, "FLOAT": io.Float, "COMBO": io.Combo,
            "CONDITIONING": io.Conditioning, "LATENT": io.Latent, "SAMPLER": io.Sampler, "SIGMAS": io.Sigmas,
            "RAY_TARGET": RayTarget}


def v3_input(spec: Input) -> io.Input:
    options = spec.widget_options()
    if spec.type == "COMBO":
        options["options"] = spec.choices()
    return IO_TYPES[spec.type].Input(spec.name, tooltip=spec.tooltip, optional=spec.optional, **options)


def v3_schema(node_id: str) -> io.Schema:
    node = NODES[node_id]
    return io.Schema(node_id=node.node_id, display_name=node.display_name, category=node.category,
                     description=node.description, inputs=[v3_input(i) for i in node.inputs],
                     outputs=[IO_TYPES[o.type].Output(display_name=o.name, tooltip=o.tooltip) for o in node.outputs])


class RayFlowSampler(io.ComfyNode):
    """KSampler-style RayFlow sampling (Algorithms 2 and 3 of the paper)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema("RayFlowSampler")

    @classmethod
    def execute(cls, model, seed, steps, cfg, positive, negative, latent_image, denoise, sigma, eta,
                ray_target=None) -> io.NodeOutput:
        return io.NodeOutput(sampling.sample(model, seed, steps, cfg, positive, negative, latent_image, denoise,
                                             sigma, eta, ray_target))


class RayFlowSamplerSelect(io.ComfyNode):
    """The Ray sampler as a SAMPLER for SamplerCustom / SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema("RayFlowSamplerSelect")

    @classmethod
    def execute(cls, sigma, eta, ray_target=None) -> io.NodeOutput:
        return io.NodeOutput(sampling.ray_ksampler(sigma, eta, ray_target))


class RayFlowScheduler(io.ComfyNode):
    """Ray SIGMAS (trailing timesteps from the model's own schedule)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema("RayFlowScheduler")

    @classmethod
    def execute(cls, model, steps, denoise) -> io.NodeOutput:
        return io.NodeOutput(sampling.ray_sigmas(model, steps, denoise))


class RayFlowTargetMean(io.ComfyNode):
    """Theorem-1 target mean of the batch's initial noise, probed with the model."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema("RayFlowTargetMean")

    @classmethod
    def execute(cls, model, seed, probe_steps, cfg, positive, negative, latent_image) -> io.NodeOutput:
        return io.NodeOutput(*sampling.target_mean(model, seed, probe_steps, cfg, positive, negative, latent_image))


class RayFlowLoraLoader(io.ComfyNode):
    """Stock LoRA patching plus the RayFlow LoRA's sampler settings on the MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema("RayFlowLoraLoader")

    @classmethod
    def validate_inputs(cls, lora_name) -> bool | str:
        # a V3 COMBO's value is not checked against its options by ComfyUI; the classic list input was
        return lora_loader.lora_name_error(lora_name) or True

    @classmethod
    def execute(cls, model, lora_name, strength, min_coverage=1.0) -> io.NodeOutput:
        return io.NodeOutput(lora_loader.load_lora(model, lora_name, strength, min_coverage))


NODE_LIST = [RayFlowSampler, RayFlowSamplerSelect, RayFlowScheduler, RayFlowTargetMean, RayFlowLoraLoader]


class RayFlowExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> RayFlowExtension:
    return RayFlowExtension()
