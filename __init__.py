"""RayFlow for ComfyUI: few-step RayFlow sampling nodes (SD1.5, SDXL, PixArt).

ComfyUI imports this folder as a package from ``custom_nodes/`` and, as for its own V3 nodes, calls
``comfy_entrypoint`` for the node list. Everything inside uses relative imports, because ComfyUI
has its own top-level ``nodes`` module.
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
