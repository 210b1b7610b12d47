"""Integration tests against a real ComfyUI checkout (``COMFYUI_PATH``); skipped without one.

Run with a Python that can run ComfyUI (torch + torchvision)::

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/comfyui -q
"""

import asyncio
import glob
import json
import os
import re
import urllib.error
import uuid

import pytest

from comfy_env import COMFYUI_PATH, REPO, api_workflow, get_json, post_json, run_prompt  # noqa: I001  (skips without ComfyUI)
import comfy.lora  # noqa: E402
import comfy.sd  # noqa: E402
import torch  # noqa: E402
from extension import comfy_nodes, load_extension  # noqa: E402


def test_the_comfyui_under_test_meets_the_declared_minimum():
    """``requires-comfyui`` in pyproject.toml names a version these tests have run against."""
    import tomllib

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        spec = SpecifierSet(tomllib.load(f)["tool"]["comfy"]["requires-comfyui"])
    with open(os.path.join(COMFYUI_PATH, "comfyui_version.py"), encoding="utf-8") as f:
        version = re.search(r'__version__\s*=\s*"([^"]+)"', f.read()).group(1)
    assert Version(version) in spec, (version, str(spec))


def test_object_info_lists_our_nodes_with_their_inputs(server):
    info = get_json(server + "/object_info")
    for node in ("RayFlowSampler", "RayFlowSamplerSelect", "RayFlowScheduler", "RayFlowTargetMean", "RayFlowLoraLoader"):
        assert node in info and info[node]["category"] == "sampling/rayflow"
    req = info["RayFlowSampler"]["input"]["required"]
    assert list(req) == ["model", "seed", "steps", "cfg", "positive", "negative", "latent_image", "denoise", "sigma", "eta"]
    assert req["steps"][1]["min"] == 1 and req["steps"][1]["max"] == 50
    assert "ray_target" in info["RayFlowSampler"]["input"]["optional"]
    assert "rayflow-sd15.safetensors" in info["RayFlowLoraLoader"]["input"]["required"]["lora_name"][1]["options"]
    assert info["RayFlowTargetMean"]["output"] == ["RAY_TARGET", "LATENT", "LATENT"]


OUR_NODES = ("RayFlowSampler", "RayFlowSamplerSelect", "RayFlowScheduler", "RayFlowTargetMean", "RayFlowLoraLoader")
# the classic (pre-V3) nodes' widget defaults: a node a user adds starts from these
CLASSIC_DEFAULTS = {
    "RayFlowSampler": {"seed": 0, "steps": 4, "cfg": 1.0, "denoise": 1.0, "sigma": 0.0, "eta": -1.0},
    "RayFlowSamplerSelect": {"sigma": 0.0, "eta": -1.0},
    "RayFlowScheduler": {"steps": 4, "denoise": 1.0},
    "RayFlowTargetMean": {"seed": 0, "probe_steps": 4, "cfg": 1.0},
    "RayFlowLoraLoader": {"strength": 1.0, "min_coverage": 1.0},
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _shipped_workflows():
    """``(api, ui)``: every JSON workflow under ``workflows/`` by format, told apart by content (API:
    ``{id: {"class_type", "inputs"}}``; UI: a ``nodes`` list), wherever their folders are."""
    api, ui = {}, {}
    for path in sorted(glob.glob(os.path.join(REPO, "workflows", "**", "*.json"), recursive=True)):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not data:
            continue
        name = os.path.relpath(path, REPO)
        if isinstance(data.get("nodes"), list):
            ui[name] = data
        elif all(isinstance(n, dict) and "class_type" in n and "inputs" in n for n in data.values()):
            api[name] = data
    return api, ui


def _inputs(info, node_type):
    """``{name: (type, options)}`` of a node in /object_info, required then optional, in ComfyUI's order."""
    spec = info[node_type]["input"]
    out = {**spec.get("required", {}), **spec.get("optional", {})}
    assert list(out) == [*info[node_type]["input_order"].get("required", []),
                         *info[node_type]["input_order"].get("optional", [])]
    return {name: (s[0], s[1] if len(s) > 1 else {}) for name, s in out.items()}


def _is_widget(typ):
    return isinstance(typ, list) or typ in WIDGET_TYPES


def test_object_info_matches_the_node_declarations(server, base_dir):
    """What ComfyUI serves for each V3 node is what ``nodes/schema.py`` declares (the classic nodes'
    interface): display name, description, inputs in order with type, widget options and tooltip,
    output types, names and tooltips."""
    info = get_json(server + "/object_info")
    loras = [n for n in os.listdir(base_dir / "models" / "loras") if n.endswith(".safetensors")]
    schema = load_extension().nodes.schema
    for node_id, node in schema.NODES.items():
        live = info[node_id]
        assert (live["display_name"], live["description"], live["category"]) == \
               (node.display_name, node.description, "sampling/rayflow")
        inputs = _inputs(info, node_id)
        assert list(inputs) == [i.name for i in node.inputs]
        for i in node.inputs:
            typ, opts = inputs[i.name]
            assert typ == i.type and opts.get("tooltip") == i.tooltip, (node_id, i.name, typ, opts)
            assert {k: opts[k] for k in schema.WIDGET_OPTIONS if k in opts} == i.widget_options(), (node_id, i.name)
            assert (i.name in live["input"].get("optional", {})) == i.optional
            if i.type == "COMBO":
                assert sorted(opts["options"]) == sorted(loras)
        assert live["output"] == list(node.return_types)
        assert live["output_name"] == [o.name or o.type for o in node.outputs]
        assert live["output_tooltips"] == [o.tooltip for o in node.outputs]


def test_object_info_has_the_inputs_defaults_and_outputs_the_shipped_workflows_use(server):
    """The shipped workflows (and graphs saved from them) load into these nodes: every RayFlow node's
    inputs, in /object_info's order, are the ones the API workflows give it, in their order; every
    value is in range; links into and out of our nodes carry the types /object_info declares; the UI
    files' widget values, read in /object_info's widget order (seed followed by its
    control_after_generate value), are the API twin's values; the widget defaults are the classic ones.
    Inputs no workflow gives (RayFlowSamplerSelect's ray_target) must be optional."""
    info = get_json(server + "/object_info")
    api, ui = _shipped_workflows()
    assert api and ui
    used = {}
    for wf in api.values():
        for key, node in wf.items():
            cls = node["class_type"]
            for name, value in node["inputs"].items():
                if isinstance(value, list):                           # a link [node, output slot]
                    src = wf[value[0]]["class_type"]
                    if (src in OUR_NODES or cls in OUR_NODES) and name in _inputs(info, cls):
                        typ = _inputs(info, cls)[name][0]
                        if not _is_widget(typ):
                            assert info[src]["output"][value[1]] == typ, (key, cls, name, src)
            if cls not in OUR_NODES:
                continue
            names = used.setdefault(cls, [])
            names += [n for n in node["inputs"] if n not in names]
            inputs = _inputs(info, cls)
            for name, value in node["inputs"].items():
                assert name in inputs, f"{cls} has no input {name}, which a shipped workflow gives it"
                typ, opts = inputs[name]
                if isinstance(value, list):
                    assert not _is_widget(typ), (cls, name)
                elif typ in ("INT", "FLOAT"):
                    assert opts["min"] <= value <= opts["max"], (cls, name, value)
                else:
                    assert typ == "COMBO" and isinstance(value, str), (cls, name, typ)
    assert sorted(used) == sorted(OUR_NODES)
    for cls, names in used.items():
        inputs = _inputs(info, cls)
        assert [n for n in inputs if n in names] == names, cls            # no unknown input, same order
        assert set(inputs) - set(names) <= set(info[cls]["input"].get("optional", {})), cls  # unused: optional only
        assert {n: o["default"] for n, (_, o) in inputs.items() if "default" in o} == CLASSIC_DEFAULTS[cls]

    by_name = {os.path.basename(p): wf for p, wf in api.items()}
    checked = 0
    for path, wf in ui.items():
        twin = by_name[os.path.basename(path)]
        for cls in OUR_NODES:
            api_nodes = [n for n in twin.values() if n["class_type"] == cls]
            ui_nodes = [n for n in sorted(wf["nodes"], key=lambda n: n["id"]) if n["type"] == cls]
            assert len(api_nodes) == len(ui_nodes), (path, cls)
            for a, u in zip(api_nodes, ui_nodes):
                linked = {i["name"] for i in u.get("inputs", []) if i.get("link") is not None}
                values = iter(u["widgets_values"])
                for name, (typ, opts) in _inputs(info, cls).items():
                    if not _is_widget(typ) or name in linked:
                        continue
                    assert next(values) == a["inputs"][name], (path, cls, name)
                    if opts.get("control_after_generate"):
                        assert next(values) in ("fixed", "increment", "decrement", "randomize"), (path, cls, name)
                    checked += 1
                assert next(values, None) is None, (path, cls, "widget values left over")
    assert checked


def test_a_lora_name_not_offered_is_refused_when_queued(server):
    """As with the classic list input, /prompt refuses a lora_name that is not among the options."""
    wf = api_workflow("sd15_1step.json", **{"2": {"lora_name": "not-there.safetensors"}})
    with pytest.raises(urllib.error.HTTPError) as err:
        post_json(server + "/prompt", {"prompt": wf, "client_id": "pytest"})
    assert err.value.code == 400
    errors = json.loads(err.value.read())["node_errors"]["2"]["errors"]
    assert "lora_name" in errors[0]["details"] and "'not-there.safetensors' not in" in errors[0]["details"]


SD15_WORKFLOWS = ["sd15_1step.json", "sd15_4step.json", "sd15_img2img.json", "sd15_custom_advanced.json",
                  "sd15_target_mean.json", "sd15_vs_stock.json"]


@pytest.mark.parametrize("name", SD15_WORKFLOWS)
def test_api_workflows_produce_images(server, base_dir, name):
    wf = api_workflow(name)
    result = run_prompt(server, wf)
    assert result["status"]["status_str"] == "success", result["status"]
    savers = [i for i, n in wf.items() if n["class_type"] == "SaveImage"]
    for node_id in savers:
        images = result["outputs"][node_id]["images"]
        assert images and all((base_dir / "output" / im["subfolder"] / im["filename"]).is_file() for im in images)


@pytest.mark.parametrize("lora, message", [
    ("rayflow-sdxl.safetensors", "is a RayFlow LoRA for SDXL, but the loaded model is SD1.5"),
    ("rayflow-corrupt.safetensors", "is corrupt or not a safetensors file"),
    ("rayflow-partial.safetensors", "fits only 8 of its 9 layers to this model"),
])
def test_bad_lora_is_a_node_error_and_the_server_keeps_serving(server, lora, message):
    result = run_prompt(server, api_workflow("sd15_1step.json", **{"2": {"lora_name": lora}}))
    assert result["status"]["status_str"] == "error"
    errors = [m[1] for m in result["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "RayFlowLoraLoader" and message in errors[0]["exception_message"]
    ok = run_prompt(server, api_workflow("sd15_1step.json", **{"6": {"seed": 7}}))
    assert ok["status"]["status_str"] == "success"


def test_interrupt_stops_sampling_within_one_step(server):
    import aiohttp

    async def scenario():
        client_id = uuid.uuid4().hex
        ws_url = server.replace("http", "ws") + f"/ws?clientId={client_id}"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url) as ws:
                wf = api_workflow("sd15_4step.json", **{"6": {"steps": 50, "seed": 11}, "5": {"width": 128, "height": 128}})
                async with session.post(server + "/prompt", json={"prompt": wf, "client_id": client_id}) as r:
                    pid = (await r.json())["prompt_id"]
                progress, interrupted_at, end = [], None, None
                while True:
                    msg = await asyncio.wait_for(ws.receive(), timeout=300)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    if data["type"] == "progress" and data["data"].get("node") == "6":
                        progress.append(data["data"]["value"])
                        if interrupted_at is None and data["data"]["value"] >= 2:
                            interrupted_at = data["data"]["value"]
                            async with session.post(server + "/interrupt") as r2:
                                assert r2.status == 200
                    if data["type"] in ("execution_interrupted", "execution_success", "execution_error") \
                            and data["data"].get("prompt_id") == pid:
                        end = data["type"]
                        break
                return progress, interrupted_at, end

    progress, interrupted_at, end = asyncio.run(scenario())
    assert end == "execution_interrupted", (end, progress)
    assert interrupted_at is not None and max(progress) <= interrupted_at + 1, (progress, interrupted_at)


@pytest.fixture(scope="module")
def tiny(base_dir):
    """The tiny SD1.5 model and CLIP loaded in this process, and a prompt's conditioning."""
    model, clip = comfy.sd.load_checkpoint_guess_config(str(base_dir / "models/checkpoints/sd15-base.safetensors"),
                                                        output_vae=False, output_clip=True)[:2]
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red fox"))
    return model, clip, cond


def test_sampler_node_equals_the_kernel_called_directly(tiny):
    """Same model, seed, cfg 1, eta 0: RayFlow Sampler node vs rayflow.sample_ray_sigma on the model's
    own denoiser. Tolerance: 1e-4 absolute (float32 on CPU)."""
    import comfy.sample

    import rayflow

    model, _, cond = tiny
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = comfy_nodes()["RayFlowSampler"].execute(model, 123, 3, 1.0, cond, cond, latent, 1.0, 0.0, 0.0)

    noise = comfy.sample.prepare_noise(latent["samples"], 123)
    sched = rayflow.NoiseSchedule.from_sigmas(model.get_model_object("model_sampling").sigmas)
    sigmas = sched.ray_sigmas(3)
    context = cond[0][0]
    base = model.model

    def denoiser(x, sigma, **_):
        return base.apply_model(x, sigma, c_crossattn=context)

    x = noise * (1 + float(sigmas[0]) ** 2) ** 0.5
    with torch.no_grad():
        direct = base.process_latent_out(rayflow.sample_ray_sigma(denoiser, x, sigmas, disable=True))
    torch.testing.assert_close(out["samples"], direct, rtol=0, atol=1e-4)


def test_noise_mask_inpainting_keeps_the_unmasked_region_in_a_batch(tiny):
    """Batch of 2 with a noise_mask: where the mask is 0 the input latent comes back (as with the stock
    KSampler), where it is 1 the sampler changes it."""
    model, _, cond = tiny
    src = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 4:] = 1.0
    (out,) = comfy_nodes()["RayFlowSampler"].execute(model, 5, 2, 1.0, cond, cond, {"samples": src, "noise_mask": mask},
                                                     1.0, 0.0, 0.0)
    assert out["samples"].shape == (2, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    torch.testing.assert_close(out["samples"][..., :4], src[..., :4], rtol=1e-4, atol=1e-4)
    assert (out["samples"][..., 4:] - src[..., 4:]).abs().mean() > 0.1


def test_rayflow_lora_loads_fully_in_the_stock_loader_and_ours(tiny, base_dir, monkeypatch):
    """Every LoRA module of a RayFlow file patches a weight through the stock path
    (comfy.sd.load_lora_for_models, what LoraLoader calls); our loader also attaches the settings."""
    import comfy.utils

    model, clip, _ = tiny
    path = str(base_dir / "models/loras/rayflow-sd15.safetensors")
    lora = comfy.utils.load_torch_file(path, safe_load=True)
    modules = {k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")}
    m2, _ = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
    assert len(m2.patches) - len(model.patches) == len(modules)

    import folder_paths

    monkeypatch.setattr(folder_paths, "get_full_path",
                        lambda kind, name: path if name == "rayflow-sd15.safetensors" else None)
    (m3,) = comfy_nodes()["RayFlowLoraLoader"].execute(model, "rayflow-sd15.safetensors", 1.0)
    assert len(m3.patches) - len(model.patches) == len(modules)
    assert m3.model_options["rayflow"] == {"sigma": 0.3, "path": "sigma", "steps": 4, "cfg": 1.0, "eta": 0.0,
                                           "architecture": "sd15", "guidance": None}      # no recommended_eta: 0
    assert "rayflow" not in model.model_options            # the input MODEL is not modified


def snapshot_of(object_info, names):
    """``workflows/specs/stock_nodes.json``'s form of the live ``/object_info`` for the stock nodes ``names``:
    inputs in ComfyUI's order with type, required-ness, min/max and (except file lists) options."""
    file_inputs = {"ckpt_name", "lora_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "clip_name3",
                   "vae_name", "image"}
    out = {}
    for cls in names:
        info = object_info[cls]
        inputs = {}
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
                entry = {"type": "COMBO" if isinstance(typ, list) else typ, "required": group == "required"}
                for k in ("min", "max"):
                    if k in opts:
                        entry[k] = opts[k]
                options = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
                if options is not None and name not in file_inputs:
                    entry["options"] = options
                inputs[name] = entry
        out[cls] = {"input": inputs, "output": list(info["output"])}
    return out


def test_stock_node_snapshot_matches_this_comfyui(server):
    """The offline workflow checks and the UI files' widget order rely on workflows/specs/stock_nodes.json."""
    with open(os.path.join(REPO, "workflows", "specs", "stock_nodes.json")) as f:
        snapshot = json.load(f)["nodes"]
    live = snapshot_of(get_json(server + "/object_info"), list(snapshot))
    for cls, spec in snapshot.items():
        assert list(live[cls]["input"]) == list(spec["input"]), f"{cls}: input order/names changed in this ComfyUI"
        assert live[cls] == spec, f"{cls}: workflows/specs/stock_nodes.json differs from this ComfyUI's /object_info"
