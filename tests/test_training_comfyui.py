"""The trainer's LoRA files through ComfyUI's stock LoRA code (``comfy.lora.model_lora_keys_unet``,
``comfy.lora.load_lora`` and ``ModelPatcher``): every tensor is used and the patched weights equal
the trained peft model's merged weights. Skipped unless ``COMFYUI_PATH`` points to a checkout;
run with a Python that runs ComfyUI::

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/test_training_comfyui.py -q
"""

import os

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
if not COMFYUI_PATH:
    pytest.skip("COMFYUI_PATH is not set: the ComfyUI LoRA-loading test needs a ComfyUI checkout",
                allow_module_level=True)
from comfyui_runtime import import_comfyui  # noqa: E402

import_comfyui(COMFYUI_PATH, "comfy.lora", "comfy.lora_convert", "comfy.model_patcher", "comfy.supported_models")
import torch  # noqa: E402

import comfy.lora  # noqa: E402
import comfy.lora_convert  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from training.export import SAVE_DTYPES, export_state_dict, write_lora  # noqa: E402
from training.tiny import build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl  # noqa: E402

from lora_models import ALPHA, RANK, random_lora_model  # noqa: E402

# ComfyUI unet configs describing the tiny diffusers UNets of training/tiny.py
COMFY_CONFIGS = {
    "sd15": (comfy.supported_models.SD15, dict(
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        adm_in_channels=None, in_channels=4, model_channels=32, num_res_blocks=[1, 1], transformer_depth=[1, 0],
        transformer_depth_output=[1, 1, 0, 0], channel_mult=[1, 2], transformer_depth_middle=1,
        use_linear_in_transformer=False, context_dim=32, num_heads=2, num_head_channels=-1)),
    "sdxl": (comfy.supported_models.SDXL, dict(
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        num_classes="sequential", adm_in_channels=32 + 6 * 8, in_channels=4, model_channels=32,
        num_res_blocks=[1, 1], transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1],
        channel_mult=[1, 2], transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=32 + 48,
        num_head_channels=-1, num_heads=2)),
    "pixart_alpha": (comfy.supported_models.PixArtAlpha, dict(
        image_model="pixart_alpha", input_size=8, patch_size=2, in_channels=4, hidden_size=24, depth=2, num_heads=3,
        caption_channels=32, model_max_length=16, micro_condition=True, pe_interpolation=1)),
    "pixart_sigma": (comfy.supported_models.PixArtSigma, dict(
        image_model="pixart_sigma", input_size=8, patch_size=2, in_channels=4, hidden_size=24, depth=2, num_heads=3,
        caption_channels=32, model_max_length=16, micro_condition=False, pe_interpolation=1)),
}
BUILD = {"sd15": lambda d: build_tiny_sd15(d, width=32), "sdxl": lambda d: build_tiny_sdxl(d, width=32),
         "pixart_alpha": build_tiny_pixart, "pixart_sigma": lambda d: build_tiny_pixart(d, sigma=True)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("arch", ["sd15", "sdxl", "pixart_alpha", "pixart_sigma"])
def test_stock_comfyui_lora_code_applies_the_exported_file(tmp_path, arch, precision):
    path = BUILD[arch](str(tmp_path / "m"))      # SD UNets 32 channels wide: ComfyUI uses 32 norm groups
    _, peft_sd = random_lora_model(path, arch, seed=0)
    pixart = arch.startswith("pixart")
    lora_path = str(tmp_path / "l.safetensors")
    write_lora(lora_path, export_state_dict(arch, peft_sd, RANK, ALPHA, precision), {"rayflow.architecture": arch})

    cls, unet_config = COMFY_CONFIGS[arch]
    comfy_model = cls(unet_config).get_model({})
    key_map = comfy.lora.model_lora_keys_unet(comfy_model, {})
    lora = comfy.lora_convert.convert_lora(load_file(lora_path))
    patches = comfy.lora.load_lora(lora, key_map)
    modules = {k.split(".lora_A.")[0] for k in peft_sd if ".lora_A." in k}
    if not pixart:       # the default targets include the convolutions (3x3 LoRA-down kernels)
        assert {"conv_in", "conv_out", "down_blocks.0.resnets.0.conv1", "down_blocks.0.downsamplers.0.conv"} <= modules
    assert len(patches) == len(modules), "some exported LoRA modules were not mapped by ComfyUI"

    with torch.no_grad():                    # ComfyUI leaves weights uninitialised (torch.empty)
        for p in comfy_model.parameters():
            p.normal_(0, 0.02)
    before = {k: v.clone() for k, v in comfy_model.state_dict().items()}
    mp = comfy.model_patcher.ModelPatcher(comfy_model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    assert len(mp.add_patches(patches, 1.0)) == len(patches)
    mp.patch_model()
    after = comfy_model.state_dict()
    for module in modules:
        target = key_map[("transformer." + module) if pixart else ("lora_unet_" + module.replace(".", "_"))]
        # the file holds the weights rounded to the saved dtype (alpha / rank = 2 scales exactly)
        A, B = (peft_sd[module + part].to(SAVE_DTYPES[precision]).float() for part in (".lora_A.weight", ".lora_B.weight"))
        delta = (B.flatten(1) @ A.flatten(1)) * (ALPHA / RANK)
        if isinstance(target, tuple):            # a slice of a fused weight (PixArt qkv / kv)
            target, (dim, start, size) = target
            got = (after[target] - before[target]).narrow(dim, start, size).flatten(1)
        else:
            got = (after[target] - before[target]).flatten(1)
        torch.testing.assert_close(got, delta, rtol=1e-4, atol=1e-5, msg=lambda m: f"{module} -> {target}: {m}")


@pytest.mark.parametrize("family", ["sd15", "sdxl", "pixart", "sd35_medium", "flux_dev"])
def test_bench_scale_comfyui_key_match_counts_every_module(tmp_path, family):
    """``bench.scale``'s ComfyUI key match (the family's ComfyUI model on the meta device, built from
    ``comfy_unet_config`` of the diffusers config, or for SD3.5 and FLUX.1 detected by ComfyUI from the
    diffusers transformer's keys) on the tiny models: every module of the exported file maps and patches. At full size the benchmark runs the same function (README, Hardware and cost)."""
    from bench.scale.keys import keymatch_comfyui
    from bench.scale.runs import export_untrained_lora

    lora = export_untrained_lora(family, str(tmp_path / "lora.safetensors"), tiny=True)
    km = keymatch_comfyui(family, lora["lora"], tiny=True)
    assert km["matched"] == km["total"] == km["patches"] == lora["lora_modules"] > 0, km
    # a module ComfyUI has no key for is counted as unmatched, not silently dropped
    tensors = load_file(lora["lora"])
    first = next(k for k in tensors if k.endswith((".lora_down.weight", ".lora_A.weight")))
    stem = first.rsplit(".", 2)[0]
    extra = {k.replace(stem, stem + "_nowhere"): v.clone() for k, v in tensors.items() if k.startswith(stem + ".")}
    from safetensors.torch import save_file

    save_file({**tensors, **extra}, str(tmp_path / "extra.safetensors"))
    km2 = keymatch_comfyui(family, str(tmp_path / "extra.safetensors"), tiny=True)
    assert km2["total"] == km["total"] + 1 and km2["matched"] == km["matched"], km2
