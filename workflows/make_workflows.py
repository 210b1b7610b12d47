"""Writes the workflows: API format in ``workflows/api/`` (POST /prompt) and UI format in
``workflows/ui/`` (drag into the browser). Run: ``python workflows/make_workflows.py``.

One place builds them, so every file uses the same node ids, prompts and recommended settings.
The UI files are derived from the API ones with the node specs (widget order, output types):
stock nodes from ``workflows/stock_nodes.json`` (a snapshot of ComfyUI's ``/object_info``), ours
from their ``INPUT_TYPES``.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
POS = "a photo of a red fox in the snow, detailed"


def node(cls, title, **inputs):
    return {"class_type": cls, "inputs": inputs, "_meta": {"title": title}}


def base(ckpt, lora):
    return {
        "1": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=ckpt),
        "2": node("RayFlowLoraLoader", "RayFlow LoRA Loader", model=["1", 0], lora_name=lora, strength=1.0, min_coverage=1.0),
        "3": node("CLIPTextEncode", "Positive", clip=["1", 1], text=POS),
        "4": node("CLIPTextEncode", "Negative", clip=["1", 1], text=""),
    }


def ray_sampler(latent, steps, denoise=1.0, seed=42, **extra):
    return node("RayFlowSampler", "RayFlow Sampler", model=["2", 0], seed=seed, steps=steps, cfg=1.0,
                positive=["3", 0], negative=["4", 0], latent_image=latent, denoise=denoise, sigma=0.0, eta=0.0, **extra)


def t2i(steps, size, ckpt, lora, prefix):
    wf = base(ckpt, lora)
    wf["5"] = node("EmptyLatentImage", "Empty Latent Image", width=size, height=size, batch_size=1)
    wf["6"] = ray_sampler(["5", 0], steps)
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["1", 2])
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix=prefix)
    return wf


def pixart(steps):
    wf = {
        "1": node("UNETLoader", "Load PixArt transformer", unet_name="PixArt-Sigma-XL-2-1024-MS.safetensors", weight_dtype="default"),
        "9": node("CLIPLoader", "Load T5", clip_name="t5xxl_fp16.safetensors", type="pixart", device="default"),
        "10": node("VAELoader", "Load VAE", vae_name="pixart_sigma_vae.safetensors"),
        "2": node("RayFlowLoraLoader", "RayFlow LoRA Loader", model=["1", 0], lora_name="rayflow-pixart-sigma.safetensors", strength=1.0, min_coverage=1.0),
        "3": node("CLIPTextEncode", "Positive", clip=["9", 0], text=POS),
        "4": node("CLIPTextEncode", "Negative", clip=["9", 0], text=""),
        "5": node("EmptyLatentImage", "Empty Latent Image", width=1024, height=1024, batch_size=1),
    }
    wf["6"] = ray_sampler(["5", 0], steps)
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["10", 0])
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix="rayflow_pixart_4step")
    return wf


def img2img():
    wf = base("sd15-base.safetensors", "rayflow-sd15.safetensors")
    wf["11"] = node("LoadImage", "Load Image", image="example.png")
    wf["5"] = node("VAEEncode", "VAE Encode", pixels=["11", 0], vae=["1", 2])
    wf["6"] = ray_sampler(["5", 0], 4, denoise=0.6)
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["1", 2])
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix="rayflow_sd15_img2img")
    return wf


def custom_advanced():
    wf = base("sd15-base.safetensors", "rayflow-sd15.safetensors")
    wf["5"] = node("EmptyLatentImage", "Empty Latent Image", width=512, height=512, batch_size=1)
    wf["12"] = node("RandomNoise", "Random Noise", noise_seed=42)
    wf["13"] = node("CFGGuider", "CFG Guider", model=["2", 0], positive=["3", 0], negative=["4", 0], cfg=1.0)
    wf["14"] = node("RayFlowSamplerSelect", "RayFlow Sampler (SAMPLER)", sigma=0.0, eta=0.0)
    wf["15"] = node("RayFlowScheduler", "RayFlow Scheduler (SIGMAS)", model=["2", 0], steps=4, denoise=1.0)
    wf["6"] = node("SamplerCustomAdvanced", "SamplerCustomAdvanced", noise=["12", 0], guider=["13", 0],
                   sampler=["14", 0], sigmas=["15", 0], latent_image=["5", 0])
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["1", 2])
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix="rayflow_sd15_custom_advanced")
    return wf


def target_mean():
    wf = t2i(2, 512, "sd15-base.safetensors", "rayflow-sd15.safetensors", "rayflow_sd15_target_mean")
    wf["16"] = node("RayFlowTargetMean", "Ray Target Mean", model=["1", 0], seed=42, probe_steps=4, cfg=4.5,
                    positive=["3", 0], negative=["4", 0], latent_image=["5", 0])
    wf["6"]["inputs"].update(ray_target=["16", 0], eta=0.5)
    return wf


def side_by_side():
    wf = t2i(4, 512, "sd15-base.safetensors", "rayflow-sd15.safetensors", "rayflow_sd15_4step")
    wf["17"] = node("KSampler", "Stock KSampler (base model, 4 steps)", model=["1", 0], seed=42, steps=4, cfg=7.0,
                    sampler_name="euler", scheduler="normal", positive=["3", 0], negative=["4", 0],
                    latent_image=["5", 0], denoise=1.0)
    wf["18"] = node("VAEDecode", "VAE Decode (stock)", samples=["17", 0], vae=["1", 2])
    wf["19"] = node("SaveImage", "Save Image (stock)", images=["18", 0], filename_prefix="stock_sd15_4step")
    return wf


WORKFLOWS = {
    "sd15_1step.json": t2i(1, 512, "sd15-base.safetensors", "rayflow-sd15.safetensors", "rayflow_sd15_1step"),
    "sd15_4step.json": t2i(4, 512, "sd15-base.safetensors", "rayflow-sd15.safetensors", "rayflow_sd15_4step"),
    "sdxl_4step.json": t2i(4, 1024, "sd_xl_base_1.0.safetensors", "rayflow-sdxl.safetensors", "rayflow_sdxl_4step"),
    "pixart_4step.json": pixart(4),
    "sd15_img2img.json": img2img(),
    "sd15_custom_advanced.json": custom_advanced(),
    "sd15_target_mean.json": target_mean(),
    "sd15_vs_stock.json": side_by_side(),
}

SEEDED = {"seed", "noise_seed"}          # widgets followed by ComfyUI's control_after_generate value


def node_specs():
    """``{class: {"inputs": [(name, type, is_widget)], "outputs": [type]}}`` for stock and RayFlow nodes."""
    import importlib.util
    import sys
    import types

    specs = {}
    stock = json.load(open(os.path.join(HERE, "stock_nodes.json")))["nodes"]
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
    for cls, node_cls in mod.NODE_CLASS_MAPPINGS.items():
        inputs = []
        for group in node_cls.INPUT_TYPES().values():
            for n, (t, _) in group.items():
                widget = isinstance(t, list) or t in ("INT", "FLOAT", "STRING", "BOOLEAN")
                inputs.append((n, "COMBO" if isinstance(t, list) else t, widget))
        specs[cls] = {"inputs": inputs, "outputs": list(node_cls.RETURN_TYPES)}
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


if __name__ == "__main__":
    specs = node_specs()
    for sub in ("api", "ui"):
        os.makedirs(os.path.join(HERE, sub), exist_ok=True)
    for name, wf in WORKFLOWS.items():
        for sub, data in (("api", wf), ("ui", to_ui(wf, specs))):
            with open(os.path.join(HERE, sub, name), "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
    print(f"wrote {len(WORKFLOWS)} workflows to workflows/api/ and workflows/ui/")
