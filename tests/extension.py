"""Import the repository root as a package, the way ComfyUI loads a custom-node folder."""

import importlib.util
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "rayflow_comfy_ext"


def load_extension():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    if "folder_paths" not in sys.modules:      # ComfyUI's module, stubbed: no LoRA files
        stub = types.ModuleType("folder_paths")
        stub.get_filename_list = lambda kind: []
        stub.get_full_path = lambda kind, name: None
        sys.modules["folder_paths"] = stub
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def comfy_nodes():
    """``{node_id: class}`` of the nodes as ComfyUI registers them (``nodes.load_custom_node``: call
    ``comfy_entrypoint``, list the extension's nodes, key them by their schema's ``node_id``).
    Needs ComfyUI's ``comfy_api`` on ``sys.path``."""
    import asyncio

    extension = asyncio.run(load_extension().comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}
