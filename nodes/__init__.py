"""The RayFlow ComfyUI nodes. ComfyUI modules are imported lazily inside the node methods, so the
package imports (and its pure logic is tested) without ComfyUI."""

from .lora_loader import RayFlowLoraLoader
from .sampling import RayFlowSampler, RayFlowSamplerSelect, RayFlowScheduler, RayFlowTargetMean

NODE_CLASS_MAPPINGS = {
    "RayFlowSampler": RayFlowSampler,
    "RayFlowSamplerSelect": RayFlowSamplerSelect,
    "RayFlowScheduler": RayFlowScheduler,
    "RayFlowTargetMean": RayFlowTargetMean,
    "RayFlowLoraLoader": RayFlowLoraLoader,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "RayFlowSampler": "RayFlow Sampler",
    "RayFlowSamplerSelect": "RayFlow Sampler (SAMPLER)",
    "RayFlowScheduler": "RayFlow Scheduler (SIGMAS)",
    "RayFlowTargetMean": "Ray Target Mean",
    "RayFlowLoraLoader": "RayFlow LoRA Loader",
}
