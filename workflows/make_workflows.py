"""Writes the API-format workflows in ``workflows/api/`` (run: ``python workflows/make_workflows.py``).

One place builds them, so every file uses the same node ids, prompts and recommended settings.
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
        "2": node("RayFlowLoraLoader", "RayFlow LoRA Loader", model=["1", 0], lora_name=lora, strength=1.0),
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
        "2": node("RayFlowLoraLoader", "RayFlow LoRA Loader", model=["1", 0], lora_name="rayflow-pixart-sigma.safetensors", strength=1.0),
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

if __name__ == "__main__":
    os.makedirs(os.path.join(HERE, "api"), exist_ok=True)
    for name, wf in WORKFLOWS.items():
        with open(os.path.join(HERE, "api", name), "w") as f:
            json.dump(wf, f, indent=2)
            f.write("\n")
    print(f"wrote {len(WORKFLOWS)} workflows to workflows/api/")
