"""The RayFlow ComfyUI nodes, on ComfyUI's V3 schema.

ComfyUI finds them through :func:`comfy_entrypoint`, which imports ``nodes/v3.py`` (and with it
``comfy_api``) when ComfyUI calls it. Everything else here imports ComfyUI modules only inside
functions, so the package imports, and its logic and declarations (``NODES``) are tested, without
ComfyUI.
"""

from .schema import NODES


async def comfy_entrypoint():
    """The ``ComfyExtension`` listing the five nodes (called by ComfyUI's ``nodes.load_custom_node``)."""
    from .v3 import comfy_entrypoint as entrypoint

    return await entrypoint()


__all__ = ["NODES", "comfy_entrypoint"]
