"""UI-format workflows from API-format ones: the node specs (stock nodes from the ``/object_info``
snapshot in ``specs/stock_nodes.json``, ours from their declarations) and the conversion that lays the
graph out, links it and orders the widget values as the frontend expects. Used by ``make_workflows.py``."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
STOCK_NODES = os.path.join(HERE, "specs", "stock_nodes.json")

SEEDED = {"seed", "noise_seed"}          # widgets followed by ComfyUI's control_after_generate value


def our_node_decls(pack) -> dict:
    """``{node id: (INPUT_TYPES dict, RETURN_TYPES)}`` of the pack's nodes (``pack``: the imported
    repository root), from their declarations (``nodes.NODES``, ``nodes/schema.py``)."""
    return {k: (n.input_types(), tuple(n.return_types)) for k, n in pack.nodes.NODES.items()}


def node_specs():
    """``{class: {"inputs": [(name, type, is_widget)], "outputs": [type]}}`` for stock and RayFlow nodes."""
    import importlib.util
    import sys
    import types

    specs = {}
    with open(STOCK_NODES, encoding="utf-8") as f:
        stock = json.load(f)["nodes"]
    for cls, spec in stock.items():
        specs[cls] = {"inputs": [(n, e["type"], e["type"] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"))
                                 for n, e in spec["input"].items()], "outputs": spec["output"]}
    sys.modules.setdefault("folder_paths", types.SimpleNamespace(get_filename_list=lambda kind: [],
                                                                 get_full_path=lambda kind, name: None))
    repo = os.path.dirname(HERE)
    spec = importlib.util.spec_from_file_location("rayflow_comfy_gen", os.path.join(repo, "__init__.py"),
                                                  submodule_search_locations=[repo])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rayflow_comfy_gen"] = mod
    spec.loader.exec_module(mod)
    for cls, (input_types, return_types) in our_node_decls(mod).items():
        inputs = []
        for group in input_types.values():
            for n, (t, _) in group.items():
                widget = isinstance(t, list) or t in ("INT", "FLOAT", "STRING", "BOOLEAN")
                inputs.append((n, "COMBO" if isinstance(t, list) else t, widget))
        specs[cls] = {"inputs": inputs, "outputs": list(return_types)}
    return specs


def to_ui(api: dict, specs: dict) -> dict:
    """API-format prompt -> UI-format workflow (nodes on a grid, links, widget values in spec order)."""
    ids = {k: i + 1 for i, k in enumerate(api)}
    links, nodes = [], []
    out_links = {}
    for key, node in api.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                src, slot = value
                link_id = len(links) + 1
                in_types = dict((n, t) for n, t, _ in specs[node["class_type"]]["inputs"])
                links.append([link_id, ids[src], slot, ids[key], None, specs[api[src]["class_type"]]["outputs"][slot]])
                out_links.setdefault((src, slot), []).append(link_id)
                links[-1].append(name)      # temporary: the input name, resolved to a slot below
    for order, (key, node) in enumerate(api.items()):
        spec = specs[node["class_type"]]
        inputs, widgets = [], []
        for name, typ, is_widget in spec["inputs"]:
            value = node["inputs"].get(name)
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            if is_widget and not linked:
                if name in node["inputs"]:
                    widgets.append(value)
                    if name in SEEDED:
                        widgets.append("fixed")
                continue
            if name in node["inputs"] or not is_widget:
                link = next((l[0] for l in links if l[3] == ids[key] and l[6] == name), None)
                if link is None and name not in node["inputs"]:
                    continue                      # optional input left unconnected
                inputs.append({"name": name, "type": typ, "link": link})
        for i, inp in enumerate(inputs):
            for l in links:
                if l[0] == inp["link"]:
                    l[4] = i
        outputs = [{"name": t, "type": t, "links": out_links.get((key, slot), []), "slot_index": slot}
                   for slot, t in enumerate(spec["outputs"])]
        col, row = order % 4, order // 4
        nodes.append({"id": ids[key], "type": node["class_type"], "pos": [40 + 360 * col, 40 + 320 * row],
                      "size": [320, 260], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                      "outputs": outputs, "title": node.get("_meta", {}).get("title", node["class_type"]),
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets})
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes,
            "links": [l[:6] for l in links], "groups": [], "config": {}, "extra": {}, "version": 0.4}
