"""Writes the workflows and their Templates-menu thumbnails. Run: ``python workflows/make_workflows.py``.

Layout (ComfyUI lists the top level of a node pack's ``workflows/`` folder as templates, by file name,
with a ``.jpg`` of the same name as the thumbnail):

* ``workflows/<name>.json``: UI format (drag into the browser, or Workflow > Browse Templates), each
  with a Note saying which base model and RayFlow LoRA it expects and how to make the LoRA, and
  ComfyUI's ``models`` list (name, directory, download URL) for the files with a public URL;
* ``workflows/<name>.jpg``: its thumbnail, a drawing of the graph (there is no sample output to show);
* ``workflows/api/<name>.json``: the same graph in API format (POST /prompt);
* ``workflows/specs/stock_nodes.json``: a snapshot of ComfyUI's ``/object_info`` for the stock nodes
  used here (not a workflow, so not in the templates folder).

The drawing of the thumbnails is ``thumbnails.py``, the API -> UI conversion ``ui_format.py``.

One place builds them, so every file uses the same node ids, prompts and recommended settings.
The UI files are derived from the API ones with the node specs (widget order, output types):
stock nodes from the snapshot, ours from their declarations (``nodes/schema.py``).
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)          # the thumbnail drawing and the UI-format conversion live beside this script
import thumbnails  # noqa: E402
from thumbnails import THUMB  # noqa: E402,F401  (the size the tests check)
from ui_format import node_specs, our_node_decls, to_ui  # noqa: E402,F401  (our_node_decls: the tests read it)
TEMPLATES_DIR = HERE                                   # what ComfyUI's Templates menu lists
API_DIR = os.path.join(HERE, "api")
POS = "a photo of a red fox in the snow, detailed"

HF = "https://huggingface.co/"
# Model files a workflow names under their public file name, so ComfyUI's frontend can offer the
# download when one is missing (``models`` entries: name, ComfyUI models/ folder, URL).
DOWNLOADS = {
    "sd_xl_base_1.0.safetensors": ("checkpoints", HF + "stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"),
    "t5xxl_fp16.safetensors": ("text_encoders", HF + "comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"),
    "sdxl_vae.safetensors": ("vae", HF + "stabilityai/sdxl-vae/resolve/main/sdxl_vae.safetensors"),
    "clip_l.safetensors": ("text_encoders", HF + "comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"),
}

# What each family's workflows load, and where the RayFlow LoRA comes from. ``model_arg`` is the
# ``--model`` of ``python -m training.distill`` run from the pack's folder (ComfyUI/custom_nodes/<pack>).
FAMILIES = {
    "sd15": {
        "ckpt": "sd15-base.safetensors", "lora": "rayflow-sd15.safetensors", "resolution": 512,
        "base": "an SD1.5 checkpoint (one .safetensors file) in ComfyUI/models/checkpoints, picked in Load "
                "Checkpoint (this workflow names it sd15-base.safetensors), e.g. v1-5-pruned-emaonly-fp16.safetensors "
                "from " + HF + "Comfy-Org/stable-diffusion-v1-5-archive",
        "model_arg": "../../models/checkpoints/sd15-base.safetensors",
    },
    "sdxl": {
        "ckpt": "sd_xl_base_1.0.safetensors", "lora": "rayflow-sdxl.safetensors", "resolution": 1024,
        "base": "the SDXL base 1.0 checkpoint sd_xl_base_1.0.safetensors in ComfyUI/models/checkpoints, from "
                + HF + "stabilityai/stable-diffusion-xl-base-1.0 (ComfyUI offers the download when it is missing)",
        "model_arg": "../../models/checkpoints/sd_xl_base_1.0.safetensors",
    },
    "pixart": {
        "unet": "PixArt-Sigma-XL-2-1024-MS.safetensors", "clip": "t5xxl_fp16.safetensors", "vae": "sdxl_vae.safetensors",
        "lora": "rayflow-pixart-sigma.safetensors", "resolution": 1024,
        "base": "PixArt-Sigma XL-2 1024: its transformer in ComfyUI/models/diffusion_models, picked in Load PixArt "
                "transformer (this workflow names it PixArt-Sigma-XL-2-1024-MS.safetensors), the T5-XXL text encoder "
                "t5xxl_fp16.safetensors in models/text_encoders and the SDXL VAE sdxl_vae.safetensors in models/vae "
                "(ComfyUI offers those two downloads when they are missing)",
        "model_arg": "pixart-sigma-diffusers",
        "model_note": "PixArt trains from a diffusers folder (there is no PixArt single-file loader), e.g. the "
                      "Hugging Face repository PixArt-alpha/PixArt-Sigma-XL-2-1024-MS downloaded to pixart-sigma-diffusers",
    },
    "sd35": {
        "ckpt": "sd3.5_large.safetensors", "clip": ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"),
        "lora": "rayflow-sd35.safetensors", "resolution": 1024,
        "base": "SD3.5 Large: sd3.5_large.safetensors (from the gated Hugging Face repository "
                "stabilityai/stable-diffusion-3.5-large; SD3.5 Medium works the same way) in ComfyUI/models/checkpoints, "
                "and its text encoders clip_l.safetensors, clip_g.safetensors (the same repository's text_encoders/) "
                "and t5xxl_fp16.safetensors in models/text_encoders (ComfyUI offers clip_l and t5xxl_fp16 when missing)",
        "model_arg": "sd3.5-large-diffusers",
        "model_note": "SD3 / SD3.5 train from the diffusers folder of the same model (all of "
                      "stabilityai/stable-diffusion-3.5-large downloaded to sd3.5-large-diffusers: transformer, VAE, "
                      "CLIP-L, CLIP-G and T5)",
    },
    "flux_dev": {
        "unet": "flux1-dev.safetensors", "clip": ("clip_l.safetensors", "t5xxl_fp16.safetensors"), "vae": "ae.safetensors",
        "lora": "rayflow-flux-dev.safetensors", "resolution": 1024, "extra_args": "--base-precision nf4",
        "base": "FLUX.1-dev: flux1-dev.safetensors in ComfyUI/models/diffusion_models and its VAE ae.safetensors in "
                "models/vae (both from the gated Hugging Face repository black-forest-labs/FLUX.1-dev), clip_l.safetensors "
                "and t5xxl_fp16.safetensors in models/text_encoders (ComfyUI offers those two when missing)",
        "model_arg": "flux1-dev-diffusers",
        "model_note": "FLUX trains from the diffusers folder of the same model (black-forest-labs/FLUX.1-dev "
                      "downloaded whole to flux1-dev-diffusers); --base-precision nf4 keeps it within one 24 GB GPU "
                      "(README: SD3 / SD3.5 and FLUX.1)",
    },
}


def node(cls, title, **inputs):
    return {"class_type": cls, "inputs": inputs, "_meta": {"title": title}}


SD15 = FAMILIES["sd15"]["ckpt"], FAMILIES["sd15"]["lora"]
SDXL = FAMILIES["sdxl"]["ckpt"], FAMILIES["sdxl"]["lora"]


def base(ckpt, lora):
    return {
        "1": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=ckpt),
        "2": node("RayFlowLoraLoader", "RayFlow LoRA Loader", model=["1", 0], lora_name=lora, strength=1.0, min_coverage=1.0),
        "3": node("CLIPTextEncode", "Positive", clip=["1", 1], text=POS),
        "4": node("CLIPTextEncode", "Negative", clip=["1", 1], text=""),
    }


def ray_sampler(latent, steps, denoise=1.0, seed=42, **extra):
    return node("RayFlowSampler", "RayFlow Sampler", model=["2", 0], seed=seed, steps=steps, cfg=1.0,
                positive=["3", 0], negative=["4", 0], latent_image=latent, denoise=denoise, sigma=0.0, eta=-1.0, **extra)


def t2i(steps, size, ckpt, lora, prefix):
    wf = base(ckpt, lora)
    wf["5"] = node("EmptyLatentImage", "Empty Latent Image", width=size, height=size, batch_size=1)
    wf["6"] = ray_sampler(["5", 0], steps)
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["1", 2])
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix=prefix)
    return wf


def separate_loaders(loaders, clip, vae, lora, latent_cls, steps, prefix, extra=None):
    """Text to image from separately loaded parts: ``loaders`` (the model as node "1"), ``clip`` and
    ``vae`` (their outputs), the RayFlow LoRA, a 1024 px ``latent_cls`` latent, then ``extra`` nodes
    (nodes between the loaders and the sampler; the sampler takes ``model`` / ``positive`` from them
    when they name those keys)."""
    wf = dict(loaders)
    wf["2"] = node("RayFlowLoraLoader", "RayFlow LoRA Loader", model=["1", 0], lora_name=lora, strength=1.0, min_coverage=1.0)
    wf["3"] = node("CLIPTextEncode", "Positive", clip=clip, text=POS)
    wf["4"] = node("CLIPTextEncode", "Negative", clip=clip, text="")
    wf["5"] = node(latent_cls, "Empty Latent Image", width=1024, height=1024, batch_size=1)
    extra = extra or {}
    wf.update(extra.get("nodes", {}))
    wf["6"] = ray_sampler(["5", 0], steps)
    wf["6"]["inputs"].update(extra.get("sampler", {}))
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=vae)
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix=prefix)
    return wf


def pixart(steps):
    fam = FAMILIES["pixart"]
    return separate_loaders({
        "1": node("UNETLoader", "Load PixArt transformer", unet_name=fam["unet"], weight_dtype="default"),
        "9": node("CLIPLoader", "Load T5", clip_name=fam["clip"], type="pixart", device="default"),
        "10": node("VAELoader", "Load VAE", vae_name=fam["vae"]),
    }, ["9", 0], ["10", 0], fam["lora"], "EmptyLatentImage", steps, "rayflow_pixart_4step")


def sd35(steps):
    fam = FAMILIES["sd35"]
    return separate_loaders({
        "1": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=fam["ckpt"]),
        "9": node("TripleCLIPLoader", "Load CLIP-L, CLIP-G, T5", clip_name1=fam["clip"][0], clip_name2=fam["clip"][1],
                  clip_name3=fam["clip"][2]),
    }, ["9", 0], ["1", 2], fam["lora"], "EmptySD3LatentImage", steps, "rayflow_sd35_4step")


def flux_dev(steps):
    fam = FAMILIES["flux_dev"]
    shift = node("ModelSamplingFlux", "ModelSamplingFlux (shift from the size)", model=["2", 0], max_shift=1.15,
                 base_shift=0.5, width=1024, height=1024)
    return separate_loaders({
        "1": node("UNETLoader", "Load FLUX.1-dev", unet_name=fam["unet"], weight_dtype="default"),
        "9": node("DualCLIPLoader", "Load CLIP-L and T5", clip_name1=fam["clip"][0], clip_name2=fam["clip"][1],
                  type="flux", device="default"),
        "10": node("VAELoader", "Load VAE", vae_name=fam["vae"]),
    }, ["9", 0], ["10", 0], fam["lora"], "EmptySD3LatentImage", steps, "rayflow_flux_dev_4step",
        extra={"nodes": {"11": shift, "12": node("FluxGuidance", "FluxGuidance", conditioning=["3", 0], guidance=3.5)},
               "sampler": {"model": ["11", 0], "positive": ["12", 0]}})


def img2img():
    wf = base(*SD15)
    wf["11"] = node("LoadImage", "Load Image", image="example.png")
    wf["5"] = node("VAEEncode", "VAE Encode", pixels=["11", 0], vae=["1", 2])
    wf["6"] = ray_sampler(["5", 0], 4, denoise=0.6)
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["1", 2])
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix="rayflow_sd15_img2img")
    return wf


def custom_advanced():
    wf = base(*SD15)
    wf["5"] = node("EmptyLatentImage", "Empty Latent Image", width=512, height=512, batch_size=1)
    wf["12"] = node("RandomNoise", "Random Noise", noise_seed=42)
    wf["13"] = node("CFGGuider", "CFG Guider", model=["2", 0], positive=["3", 0], negative=["4", 0], cfg=1.0)
    wf["14"] = node("RayFlowSamplerSelect", "RayFlow Sampler (SAMPLER)", sigma=0.0, eta=-1.0)
    wf["15"] = node("RayFlowScheduler", "RayFlow Scheduler (SIGMAS)", model=["2", 0], steps=4, denoise=1.0)
    wf["6"] = node("SamplerCustomAdvanced", "SamplerCustomAdvanced", noise=["12", 0], guider=["13", 0],
                   sampler=["14", 0], sigmas=["15", 0], latent_image=["5", 0])
    wf["7"] = node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["1", 2])
    wf["8"] = node("SaveImage", "Save Image", images=["7", 0], filename_prefix="rayflow_sd15_custom_advanced")
    return wf


def target_mean():
    wf = t2i(2, 512, *SD15, "rayflow_sd15_target_mean")
    wf["16"] = node("RayFlowTargetMean", "Ray Target Mean", model=["1", 0], seed=42, probe_steps=4, cfg=4.5,
                    positive=["3", 0], negative=["4", 0], latent_image=["5", 0])
    wf["6"]["inputs"].update(ray_target=["16", 0], eta=0.5)
    return wf


def side_by_side():
    wf = t2i(4, 512, *SD15, "rayflow_sd15_4step")
    wf["17"] = node("KSampler", "Stock KSampler (base model, 4 steps)", model=["1", 0], seed=42, steps=4, cfg=7.0,
                    sampler_name="euler", scheduler="normal", positive=["3", 0], negative=["4", 0],
                    latent_image=["5", 0], denoise=1.0)
    wf["18"] = node("VAEDecode", "VAE Decode (stock)", samples=["17", 0], vae=["1", 2])
    wf["19"] = node("SaveImage", "Save Image (stock)", images=["18", 0], filename_prefix="stock_sd15_4step")
    return wf


WORKFLOWS = {
    "sd15_1step.json": t2i(1, 512, *SD15, "rayflow_sd15_1step"),
    "sd15_4step.json": t2i(4, 512, *SD15, "rayflow_sd15_4step"),
    "sdxl_4step.json": t2i(4, 1024, *SDXL, "rayflow_sdxl_4step"),
    "pixart_4step.json": pixart(4),
    "sd35_4step.json": sd35(4),
    "flux_dev_4step.json": flux_dev(4),
    "sd15_img2img.json": img2img(),
    "sd15_custom_advanced.json": custom_advanced(),
    "sd15_target_mean.json": target_mean(),
    "sd15_vs_stock.json": side_by_side(),
}

# Per template: family, the training preset its LoRA is made with, title and subtitle (the Note's
# first line and the thumbnail's text), and what else the Note says.
TEMPLATES = {
    "sd15_1step.json": ("sd15", "one-step", "SD1.5 · 1 step", "text to image, 512 px, cfg 1.0", ""),
    "sd15_4step.json": ("sd15", "few-step", "SD1.5 · 4 steps", "text to image, 512 px, cfg 1.0", ""),
    "sdxl_4step.json": ("sdxl", "few-step", "SDXL · 4 steps", "text to image, 1024 px, cfg 1.0", ""),
    "pixart_4step.json": ("pixart", "few-step", "PixArt-Sigma · 4 steps", "text to image, 1024 px, cfg 1.0",
                          "Load T5 uses CLIPLoader with type pixart."),
    "sd35_4step.json": ("sd35", "few-step", "SD3.5 · 4 steps", "text to image, 1024 px, cfg 1.0",
                        "TripleCLIPLoader loads CLIP-L, CLIP-G and T5-XXL; the schedule is the model's own (shift 3)."),
    "flux_dev_4step.json": ("flux_dev", "few-step", "FLUX.1-dev · 4 steps", "1024 px, cfg 1.0, FluxGuidance 3.5",
                            "FluxGuidance sets the guidance the LoRA was trained at (its rayflow.recommended_guidance, "
                            "3.5 by default); ModelSamplingFlux sets FLUX's shift from the image size: keep its width "
                            "and height at the latent's. The negative prompt is unused at cfg 1.0."),
    "sd15_img2img.json": ("sd15", "few-step", "SD1.5 · img2img", "4 steps at denoise 0.6",
                          "Load Image: put your picture in ComfyUI/input (this workflow names it example.png); "
                          "denoise 0.5-0.7 suits img2img."),
    "sd15_custom_advanced.json": ("sd15", "few-step", "SD1.5 · custom sampler", "SamplerCustomAdvanced, 4 steps",
                                  "The RayFlow SAMPLER and SIGMAS nodes feed the stock SamplerCustomAdvanced, "
                                  "with RandomNoise and a CFGGuider at cfg 1.0."),
    "sd15_target_mean.json": ("sd15", "few-step", "SD1.5 · Ray Target Mean", "2 stochastic steps, eta 0.5",
                              "Ray Target Mean costs probe_steps model calls per image (twice that at cfg > 1); "
                              "it and the sampler share the seed and the latent."),
    "sd15_vs_stock.json": ("sd15", "few-step", "SD1.5 · RayFlow vs stock", "4 steps each, same seed",
                           "The stock KSampler runs the base model without the LoRA (4 Euler steps, cfg 7) "
                           "from the same seed, for comparison."),
}


def training_command(family: str, preset: str) -> str:
    """The ``python -m training.distill`` line that makes the workflow's LoRA, run from the pack's folder."""
    fam = FAMILIES[family]
    return (f"python -m training.distill --model {fam['model_arg']} --prompts prompts.txt "
            f"--output ../../models/loras/{fam['lora']} --resolution {fam['resolution']} --preset {preset}"
            + (f" {fam['extra_args']}" if "extra_args" in fam else ""))


def note_text(name: str) -> str:
    family, preset, title, subtitle, extra = TEMPLATES[name]
    fam = FAMILIES[family]
    use = ("--preset one-step, for 1-step sampling; a few-step LoRA runs this workflow too" if preset == "one-step"
           else "--preset few-step, for 2-8 steps")
    paras = [
        f"RayFlow workflow: {title} ({subtitle}).",
        f"Base model: {fam['base']}.",
        f"RayFlow LoRA: {fam['lora']} in ComfyUI/models/loras, distilled from that base model ({use}). "
        "Make it from this pack's folder (ComfyUI/custom_nodes/<pack>) with the training requirements "
        "installed (README: Training a RayFlow LoRA); prompts.txt holds one prompt per line"
        + (f"; {fam['model_note']}" if "model_note" in fam else "") + ":",
        training_command(family, preset),
    ]
    if preset == "one-step":
        paras.append("A one-step run wants many more prompts x seeds (--seeds-per-prompt) and a longer "
                     "--train-steps than a few-step one (python -m training.distill --help).")
    if extra:
        paras.append(extra)
    paras.append("Keep cfg at 1.0: the LoRA has the teacher's guidance baked in."
                 if family != "flux_dev" else "Keep cfg at 1.0: FLUX.1-dev takes its guidance from FluxGuidance.")
    return "\n\n".join(paras)


def model_entry(file_name: str) -> dict:
    directory, url = DOWNLOADS[file_name]
    return {"name": file_name, "url": url, "directory": directory}


NOTE_W = 460                                           # the Note's column, left of the graph


def ui_workflow(name: str, specs: dict) -> dict:
    """The UI file: the graph of ``WORKFLOWS[name]``, the loaders' ``models`` metadata (ComfyUI's
    missing-model download prompt), and a Note beside the graph."""
    wf = to_ui(WORKFLOWS[name], specs)
    models = []
    for n in wf["nodes"]:
        n["pos"][0] += NOTE_W + 40
        mine = [model_entry(v) for v in n["widgets_values"] if isinstance(v, str) and v in DOWNLOADS]
        if mine:
            n["properties"]["models"] = mine
            models += mine
    note_id = wf["last_node_id"] + 1
    wf["nodes"].append({"id": note_id, "type": "Note", "pos": [40, 40], "size": [NOTE_W, 620], "flags": {},
                        "order": len(wf["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                        "title": "Read me: models and LoRA", "properties": {},
                        "widgets_values": [note_text(name)], "color": "#432", "bgcolor": "#653"})
    wf["last_node_id"] = note_id
    if models:
        wf["models"] = models
    return wf


def thumbnail(name: str):
    """The template's thumbnail (``thumbnails.draw``): its title, subtitle and node graph."""
    _, _, title, subtitle, _ = TEMPLATES[name]
    return thumbnails.draw(WORKFLOWS[name], title, subtitle, name[:-5])


def thumbnail_path(name: str) -> str:
    return os.path.join(TEMPLATES_DIR, name[:-5] + ".jpg")

def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    specs = node_specs()
    os.makedirs(API_DIR, exist_ok=True)
    for name, wf in WORKFLOWS.items():
        write_json(os.path.join(API_DIR, name), wf)
        write_json(os.path.join(TEMPLATES_DIR, name), ui_workflow(name, specs))
        thumbnail(name).save(thumbnail_path(name), quality=88, optimize=True)
    print(f"wrote {len(WORKFLOWS)} workflows: UI format + .jpg thumbnails in workflows/ (ComfyUI's Templates "
          "menu), API format in workflows/api/")
