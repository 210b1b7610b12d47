"""What the ComfyUI tests share: the checkout under test (``COMFYUI_PATH``; a test module that imports
this is skipped without one, or where this Python cannot run ComfyUI), ComfyUI imported in this process on the CPU, the test LoRA files and the
HTTP helpers. The server and its base folder are the session fixtures in ``conftest.py``."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
if not COMFYUI_PATH:
    pytest.skip("COMFYUI_PATH is not set: the ComfyUI integration tests need a ComfyUI checkout "
                "(README, Development)", allow_module_level=True)
if not os.path.isfile(os.path.join(COMFYUI_PATH, "main.py")):
    pytest.fail(f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI checkout (no main.py)")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from comfyui_runtime import import_comfyui  # noqa: E402

import_comfyui(COMFYUI_PATH, "comfy.lora", "comfy.sd")       # skips where this Python cannot run ComfyUI
import torch  # noqa: E402

import comfy.lora  # noqa: E402
import comfy.sd  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

SD15_META = {"rayflow.format": "1", "rayflow.architecture": "sd15", "rayflow.sigma": "0.3", "rayflow.path": "sigma",
             "rayflow.recommended_steps": "4", "rayflow.recommended_cfg": "1.0"}
PACK = "rayflow"      # the custom_nodes folder name: ComfyUI's Templates menu lists our workflows under it
# the file the trainer makes from the tiny checkpoint (write_trained_lora); the browser test queues with it
TRAINED_LORA = "rayflow-trained.safetensors"
# empty files under the names the SDXL, PixArt, SD3.5 and FLUX.1 workflows load: enough for /prompt
# validation, which checks names against the folder listings; loading them fails, as it should (the SD3 /
# FLUX nodes run on tiny models in-process in test_flow_models.py: ComfyUI's text encoders for them are
# full size, T5-XXL alone 4.7 B parameters)
STAND_INS = {"checkpoints": ["sd_xl_base_1.0.safetensors", "sd3.5_large.safetensors"],
             "diffusion_models": ["PixArt-Sigma-XL-2-1024-MS.safetensors", "flux1-dev.safetensors"],
             "text_encoders": ["t5xxl_fp16.safetensors", "clip_l.safetensors", "clip_g.safetensors"],
             "vae": ["sdxl_vae.safetensors", "ae.safetensors"],
             "loras": ["rayflow-pixart-sigma.safetensors", "rayflow-sd35.safetensors", "rayflow-flux-dev.safetensors"]}


def write_loras(model_patcher, folder):
    """A RayFlow LoRA for the tiny model's attention projections, the same file labelled SDXL, one with
    a layer the model lacks, and a corrupt file; keys in the kohya form the trainer exports."""
    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    weights = model_patcher.model.state_dict()
    g = torch.Generator().manual_seed(0)
    lora = {}
    for kohya, target in key_map.items():
        # diffusers module names only (the key map also holds LDM-named aliases of the same weights)
        diffusers_name = kohya.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"))
        if not diffusers_name or not kohya.endswith(("attn1_to_q", "attn2_to_v")):
            continue
        out_f, in_f = weights[target].shape[:2]
        lora[f"{kohya}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.1
        lora[f"{kohya}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.1
        lora[f"{kohya}.alpha"] = torch.tensor(4.0)
    assert lora, "no attention projections found in the tiny model"
    save_file(lora, os.path.join(folder, "rayflow-sd15.safetensors"), metadata=SD15_META)
    save_file(lora, os.path.join(folder, "rayflow-sdxl.safetensors"), metadata={**SD15_META, "rayflow.architecture": "sdxl"})
    extra = {"lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320, generator=g) * 0.1,
             "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4, generator=g) * 0.1,
             "lora_unet_down_blocks_7_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    save_file({**lora, **extra}, os.path.join(folder, "rayflow-partial.safetensors"), metadata=SD15_META)
    with open(os.path.join(folder, "rayflow-corrupt.safetensors"), "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")

def write_trained_lora(checkpoint, folder, work):
    """``TRAINED_LORA`` in ``folder``: ``python -m training.distill`` on the tiny single-file checkpoint
    (2 prompts, 2 teacher steps, 2 training steps), the way a user makes a LoRA for the model they run in
    ComfyUI; ``--model-config`` describes the tiny UNet (tiny_checkpoint.write_diffusers_config)."""
    from tiny_checkpoint import write_diffusers_config

    config = write_diffusers_config(os.path.join(work, "config"), os.path.join(COMFYUI_PATH, "comfy", "sd1_tokenizer"))
    prompts = os.path.join(work, "prompts.txt")
    with open(prompts, "w", encoding="utf-8") as f:
        f.write("a red fox in the snow\na blue house by the sea\n")
    cmd = [sys.executable, "-m", "training.distill", "--model", checkpoint, "--model-config", config,
           "--prompts", prompts, "--output", os.path.join(folder, TRAINED_LORA), "--work-dir", os.path.join(work, "run"),
           "--resolution", "64", "--teacher-steps", "2", "--seeds-per-prompt", "1", "--batch-size", "2",
           "--train-steps", "2", "--lora-rank", "4", "--lora-alpha", "4"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert done.returncode == 0, f"training.distill failed on the tiny checkpoint:\n{done.stderr[-3000:]}"


def write_stand_ins(models):
    """The empty ``STAND_INS`` files under ``models``."""
    for kind, names in STAND_INS.items():
        os.makedirs(os.path.join(models, kind), exist_ok=True)
        for name in names:
            open(os.path.join(models, kind, name), "wb").close()


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post_json(url, data):
    req = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        return json.loads(body) if body else {}


def api_workflow(name, **changes):
    with open(os.path.join(REPO, "workflows", "api", name)) as f:
        wf = json.load(f)
    for node in wf.values():                                 # tiny latents for CPU
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
    for node, values in changes.items():
        wf[node]["inputs"].update(values)
    return wf


def wait_for_history(server, pid, timeout=300):
    """The history entry of prompt ``pid`` once it has finished (success or error)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = get_json(f"{server}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            if hist[pid]["status"].get("status_str") in ("success", "error"):
                return hist[pid]
        time.sleep(0.5)
    pytest.fail(f"prompt {pid} did not finish in {timeout} s")


def run_prompt(server, wf, timeout=300):
    pid = post_json(server + "/prompt", {"prompt": wf, "client_id": "pytest"})["prompt_id"]
    return wait_for_history(server, pid, timeout)
