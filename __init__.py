"""RayFlow for ComfyUI: few-step RayFlow sampling nodes (SD1.5, SDXL, PixArt).

ComfyUI imports this folder as a package from ``custom_nodes/``. Everything inside uses relative
imports, because ComfyUI has its own top-level ``nodes`` module.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
