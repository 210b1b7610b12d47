"""Every workflow file is consistent: node types exist (stock or ours), links point at existing
nodes and outputs of the right type, required inputs are present, widget values are in range.
The templates folder (``workflows/``, what ComfyUI's Templates menu lists) holds exactly the UI
workflows and their thumbnails; each UI workflow has a Note naming its models and the command that
makes its LoRA, and ``models`` entries only for files with a public download.

Stock node specs come from ``workflows/specs/stock_nodes.json`` (a snapshot of ComfyUI's
``/object_info`` for the stock nodes the workflows use); ours from the nodes' declarations.
"""

import glob
import importlib.util
import json
import os
import shlex

import pytest

from extension import load_extension

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKFLOWS = os.path.join(REPO, "workflows")
FILE_INPUTS = {"ckpt_name", "lora_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "vae_name",
               "image"}


def _generator():
    spec = importlib.util.spec_from_file_location("make_workflows", os.path.join(WORKFLOWS, "make_workflows.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _generator()


def our_specs():
    specs = {}
    for name, (input_types, return_types) in GEN.our_node_decls(load_extension()).items():
        inputs = {}
        for group, items in input_types.items():
            for key, (typ, opts) in items.items():
                entry = {"type": "COMBO" if isinstance(typ, list) else typ, "required": group == "required"}
                if isinstance(typ, list) and key not in FILE_INPUTS:
                    entry["options"] = typ
                for k in ("min", "max"):
                    if k in opts:
                        entry[k] = opts[k]
                inputs[key] = entry
        specs[name] = {"input": inputs, "output": list(return_types)}
    return specs


SPECS = {**json.load(open(os.path.join(WORKFLOWS, "specs", "stock_nodes.json")))["nodes"], **our_specs()}
FILES = sorted(glob.glob(os.path.join(WORKFLOWS, "api", "*.json")))


def test_the_issue_s_workflows_exist():
    names = {os.path.basename(f) for f in FILES}
    assert {"sd15_1step.json", "sd15_4step.json", "sdxl_4step.json", "pixart_4step.json", "sd15_img2img.json",
            "sd15_custom_advanced.json", "sd15_vs_stock.json", "sd35_4step.json", "flux_dev_4step.json"} <= names


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
    for name, wf in GEN.WORKFLOWS.items():
        assert json.load(open(os.path.join(WORKFLOWS, "api", name))) == wf, f"{name} is stale: rerun make_workflows.py"


UI_FILES = sorted(glob.glob(os.path.join(WORKFLOWS, "*.json")))       # the templates ComfyUI lists


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
        if n["type"] == "Note":                      # the frontend's own node: one text widget
            assert n["inputs"] == n["outputs"] == [] and len(n["widgets_values"]) == 1
            continue
        spec = SPECS[n["type"]]["input"]
        linked = {i["name"] for i in n["inputs"]}
        widget_names = [k for k, e in spec.items() if e["type"] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                        and k not in linked]
        expected = sum(2 if k in ("seed", "noise_seed") else 1 for k in widget_names)   # + control_after_generate
        assert len(n["widgets_values"]) == expected, f"node {n['id']} ({n['type']}) widget count"


def test_ui_files_match_their_generator():
    specs = GEN.node_specs()
    for name in GEN.WORKFLOWS:
        assert json.load(open(os.path.join(WORKFLOWS, name))) == GEN.ui_workflow(name, specs), f"{name} is stale"


# ComfyUI v0.3.64 app/custom_node_manager.py: GET /workflow_templates lists <pack>/<folder>/*.json for
# these folder names and serves each folder at /api/workflow_templates/<pack>/; the frontend shows
# <name>.jpg beside <name>.json as the thumbnail
TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]


def test_templates_menu_lists_exactly_the_ui_workflows_with_thumbnails():
    listed = sorted(os.path.relpath(f, REPO) for d in TEMPLATE_FOLDERS for f in glob.glob(os.path.join(REPO, d, "*.json")))
    assert listed == sorted(os.path.join("workflows", n) for n in GEN.WORKFLOWS)
    stems = {n[:-5] for n in GEN.WORKFLOWS}
    files = {f for f in os.listdir(WORKFLOWS) if os.path.isfile(os.path.join(WORKFLOWS, f))}
    assert files == {f"{s}.json" for s in stems} | {f"{s}.jpg" for s in stems} | {"make_workflows.py", "thumbnails.py",
                                                                                      "ui_format.py"}
    assert {d for d in os.listdir(WORKFLOWS) if os.path.isdir(os.path.join(WORKFLOWS, d))} <= {"api", "specs", "__pycache__"}
    for path in UI_FILES:                            # UI format: the frontend refuses a file without a version
        wf = json.load(open(path))
        assert isinstance(wf.get("version"), (int, float)) and isinstance(wf["nodes"], list), path
        for n in wf["nodes"]:                        # the frontend's schema (zComfyNode) requires these
            assert {"id", "type", "pos", "size", "flags", "order", "mode", "properties"} <= set(n), (path, n["id"])


def _note(wf):
    notes = [n for n in wf["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1
    return notes[0]["widgets_values"][0]


@pytest.mark.parametrize("name", list(GEN.WORKFLOWS))
def test_ui_workflow_has_a_note_naming_its_models_and_the_training_command(name):
    from training.config import PRESETS, build_parser

    wf = json.load(open(os.path.join(WORKFLOWS, name)))
    text = _note(wf)
    api = GEN.WORKFLOWS[name]
    files = {k: v for n in api.values() for k, v in n["inputs"].items() if k in FILE_INPUTS - {"image"}}
    for value in files.values():
        assert value in text, f"the Note does not name {value}"
    assert "models/loras" in text and ("models/checkpoints" in text or "models/diffusion_models" in text)
    commands = [line for line in text.splitlines() if line.startswith("python -m training.distill ")]
    assert len(commands) == 1, "the Note gives one training command"
    args = build_parser().parse_args(shlex.split(commands[0])[3:])       # real flags only
    assert args.preset in PRESETS and args.preset == ("one-step" if name == "sd15_1step.json" else "few-step")
    assert args.output == "../../models/loras/" + files["lora_name"]     # from ComfyUI/custom_nodes/<pack>
    assert args.model and args.prompts and args.resolution == GEN.FAMILIES[GEN.TEMPLATES[name][0]]["resolution"]
    if "ckpt_name" in files and "model_note" not in GEN.FAMILIES[GEN.TEMPLATES[name][0]]:
        assert args.model == "../../models/checkpoints/" + files["ckpt_name"]   # trains on the checkpoint it loads
    elif "ckpt_name" in files:                        # SD3.5: the trainer reads the model's diffusers folder
        assert args.model == GEN.FAMILIES[GEN.TEMPLATES[name][0]]["model_arg"] and "diffusers" in args.model


LOADER_DIRS = {"ckpt_name": "checkpoints", "clip_name": "text_encoders", "vae_name": "vae", "unet_name": "diffusion_models",
               **{f"clip_name{i}": "text_encoders" for i in (1, 2, 3)}}


@pytest.mark.parametrize("name", list(GEN.WORKFLOWS))
def test_models_entries_name_the_loaded_file_and_its_public_download(name):
    wf = json.load(open(os.path.join(WORKFLOWS, name)))
    api = GEN.WORKFLOWS[name]
    by_title = {n["_meta"]["title"]: n for n in api.values()}
    node_models = []
    for n in wf["nodes"]:
        for m in n["properties"].get("models", []):
            assert set(m) == {"name", "url", "directory"}
            assert m["url"].startswith("https://huggingface.co/") and m["url"].endswith("/" + m["name"])
            assert m["name"] in n["widgets_values"]  # the frontend matches the entry to the widget by name
            (key,) = [k for k, v in by_title[n["title"]]["inputs"].items() if v == m["name"]]
            assert m["directory"] == LOADER_DIRS[key]
            node_models.append(m)
    assert wf.get("models", []) == node_models
    names = {m["name"] for m in node_models}
    assert "rayflow" not in " ".join(names)           # our LoRAs have no download: the Note says how to make them
    assert names == {v for n in api.values() for v in n["inputs"].values() if isinstance(v, str) and v in GEN.DOWNLOADS}


@pytest.mark.parametrize("name", list(GEN.WORKFLOWS))
def test_thumbnail_matches_its_generator(name):
    """The committed JPEG is what the generator draws now: JPEG noise stays far below a 96-level
    difference, while a changed digit in a label already moves about 20 pixels past it."""
    from PIL import Image, ImageChops

    path = os.path.join(WORKFLOWS, name[:-5] + ".jpg")
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (GEN.THUMB, GEN.THUMB)
        diff = ImageChops.difference(im.convert("RGB"), GEN.thumbnail(name)).convert("L")
    off = sum(diff.histogram()[96:])
    assert off < 8, f"{path} is stale: rerun make_workflows.py ({off} pixels differ)"
