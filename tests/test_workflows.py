"""Every workflow file is consistent: node types exist (stock or ours), links point at existing
nodes and outputs of the right type, required inputs are present, widget values are in range.

Stock node specs come from ``workflows/stock_nodes.json`` (a snapshot of ComfyUI's
``/object_info`` for the stock nodes the workflows use); ours from the nodes' ``INPUT_TYPES``.
"""

import glob
import json
import os

import pytest

from extension import load_extension

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FILE_INPUTS = {"ckpt_name", "lora_name", "unet_name", "clip_name", "vae_name", "image"}


def our_specs():
    ext = load_extension()
    specs = {}
    for name, cls in ext.NODE_CLASS_MAPPINGS.items():
        inputs = {}
        for group, items in cls.INPUT_TYPES().items():
            for key, (typ, opts) in items.items():
                entry = {"type": "COMBO" if isinstance(typ, list) else typ, "required": group == "required"}
                if isinstance(typ, list) and key not in FILE_INPUTS:
                    entry["options"] = typ
                for k in ("min", "max"):
                    if k in opts:
                        entry[k] = opts[k]
                inputs[key] = entry
        specs[name] = {"input": inputs, "output": list(cls.RETURN_TYPES)}
    return specs


SPECS = {**json.load(open(os.path.join(REPO, "workflows", "stock_nodes.json")))["nodes"], **our_specs()}
FILES = sorted(glob.glob(os.path.join(REPO, "workflows", "api", "*.json")))


def test_the_issue_s_workflows_exist():
    names = {os.path.basename(f) for f in FILES}
    assert {"sd15_1step.json", "sd15_4step.json", "sdxl_4step.json", "pixart_4step.json", "sd15_img2img.json",
            "sd15_custom_advanced.json", "sd15_vs_stock.json"} <= names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_api_workflow_is_consistent(path):
    wf = json.load(open(path))
    assert any(n["class_type"].startswith("RayFlow") for n in wf.values())
    for node_id, node in wf.items():
        cls = node["class_type"]
        assert cls in SPECS, f"{node_id}: unknown node type {cls}"
        spec = SPECS[cls]["input"]
        for name, entry in spec.items():
            if entry["required"]:
                assert name in node["inputs"], f"{node_id} ({cls}) lacks required input {name}"
        for name, value in node["inputs"].items():
            assert name in spec, f"{node_id} ({cls}) has unknown input {name}"
            entry = spec[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                src, idx = value
                assert src in wf, f"{node_id}.{name} links to missing node {src}"
                out_types = SPECS[wf[src]["class_type"]]["output"]
                assert idx < len(out_types), f"{node_id}.{name} links to output {idx} of {src}, which has {len(out_types)}"
                if entry["type"] != "COMBO":
                    assert out_types[idx] == entry["type"], f"{node_id}.{name}: {out_types[idx]} into {entry['type']}"
                continue
            if entry["type"] == "COMBO":
                if "options" in entry:
                    assert value in entry["options"], f"{node_id}.{name}={value!r} not among the options"
                else:
                    assert isinstance(value, str) and value
            elif entry["type"] in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool)
                assert entry.get("min", value) <= value <= entry.get("max", value), f"{node_id}.{name}={value} out of range"
            elif entry["type"] == "STRING":
                assert isinstance(value, str)
            elif entry["type"] == "BOOLEAN":
                assert isinstance(value, bool)
            else:
                pytest.fail(f"{node_id}.{name} of type {entry['type']} must be a link, got {value!r}")


def test_workflow_files_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflows", os.path.join(REPO, "workflows", "make_workflows.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, wf in mod.WORKFLOWS.items():
        assert json.load(open(os.path.join(REPO, "workflows", "api", name))) == wf, f"{name} is stale: rerun make_workflows.py"


UI_FILES = sorted(glob.glob(os.path.join(REPO, "workflows", "ui", "*.json")))


def test_every_api_workflow_has_a_ui_twin():
    assert [os.path.basename(f) for f in UI_FILES] == [os.path.basename(f) for f in FILES]


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
def test_ui_workflow_links_and_widgets_are_consistent(path):
    wf = json.load(open(path))
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] == max(nodes) and wf["last_link_id"] == len(wf["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert src in nodes and dst in nodes, f"link {link_id} joins missing nodes"
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id, f"link {link_id} is not recorded on both ends"
        assert out["type"] == typ and inp["type"] in (typ, "COMBO"), f"link {link_id}: {out['type']} -> {inp['type']}"
        assert SPECS[nodes[src]["type"]]["output"][src_slot] == typ
    for n in nodes.values():
        spec = SPECS[n["type"]]["input"]
        linked = {i["name"] for i in n["inputs"]}
        widget_names = [k for k, e in spec.items() if e["type"] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                        and k not in linked]
        expected = sum(2 if k in ("seed", "noise_seed") else 1 for k in widget_names)   # + control_after_generate
        assert len(n["widgets_values"]) == expected, f"node {n['id']} ({n['type']}) widget count"


def test_ui_files_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflows_ui", os.path.join(REPO, "workflows", "make_workflows.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    specs = mod.node_specs()
    for name, wf in mod.WORKFLOWS.items():
        assert json.load(open(os.path.join(REPO, "workflows", "ui", name))) == mod.to_ui(wf, specs), f"{name} is stale"
