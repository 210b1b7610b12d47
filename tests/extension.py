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
