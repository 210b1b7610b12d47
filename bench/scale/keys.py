"""Whether an exported LoRA's keys reach the model: loaded in diffusers, and mapped by ComfyUI.

Both sides build the family's full-size denoiser (``tiny``: the tiny one) from its config without
its weights, so a model too large for this machine's memory (FLUX.1-dev: 12 B parameters) is matched
at full size. :func:`keymatch_diffusers` loads the file into the denoiser as diffusers (or, for
PixArt, peft through ``training.export``) does, every frozen weight a zero-stride view of one zero
(the shapes of the real ones, no memory), and counts the file's modules whose weights arrived
unchanged. :func:`keymatch_comfyui` maps it with ComfyUI's own ``comfy.lora`` on ComfyUI's model of
the family, built on the meta device from :func:`comfy_unet_config` (the diffusers config turned
into the keys ComfyUI builds its model from), or, for the families whose ``comfy_detects`` is set,
from the diffusers transformer's keys by ComfyUI's own detection, as ``load_diffusion_model`` loads a
diffusers file; it runs where ComfyUI imports (``COMFYUI_PATH`` on ``sys.path``), so every ComfyUI
import is inside it. ComfyUI fuses SD3's q/k/v and FLUX's single-block projections into one weight:
each module of the file is one patch of a slice of it, so patches are counted per module.
"""

from __future__ import annotations

from typing import Dict, List

import diffusers
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from rayflow.lora_file import lora_module_names
from training.export import load_transformer_lora

from .families import REGISTRY, T5_TOKENS, denoiser


def lora_modules(tensors: Dict) -> List[str]:
    """Module names of a LoRA file's tensors (kohya ``lora_unet_*`` or peft ``transformer.*``), sorted."""
    return sorted(lora_module_names(tensors))


def weightless(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` (built on the meta device) with every parameter and buffer a zero-stride CPU view of one
    zero of its dtype: the real shapes, no memory, and a device that loaders can put adapters on."""
    for module in net.modules():
        for group in (module._parameters, module._buffers):
            for key, t in group.items():
                if t is not None:
                    zero = torch.zeros((), dtype=t.dtype).expand(t.shape)
                    group[key] = torch.nn.Parameter(zero, requires_grad=False) if group is module._parameters else zero
    return net


def _state_and_alphas(cls, lora_path: str):
    """A pipeline's ``lora_state_dict`` of the file as ``(state, network_alphas)`` (SDXL's returns a pair,
    SD3's and FLUX's the state alone: a file in the transformer layout has its scale folded in)."""
    got = cls.lora_state_dict(lora_path)
    return got[:2] if isinstance(got, tuple) else (got, None)


def keymatch_diffusers(family: str, lora_path: str, tiny: bool = False) -> Dict:
    """Load the LoRA file into the family's full-size denoiser (``tiny``: the tiny one), built from its
    config without weights (:func:`weightless`), with diffusers (``lora_state_dict`` +
    ``load_lora_adapter``; PixArt: ``training.export.load_transformer_lora`` with peft) and count the
    file's modules whose weights arrived unchanged in the model's adapter."""
    fam = REGISTRY[family]
    tensors = load_file(lora_path)
    modules = lora_modules(tensors)
    net = weightless(denoiser(family, tiny=tiny).build(torch.device("meta"), torch.bfloat16))
    built = f"{fam.denoiser_class} built from its config, no weights"
    if fam.denoiser == "unet":              # kohya lora_unet_* keys
        name, parts = (lambda m: "lora_unet_" + m.replace(".", "_")), (".lora_down.weight", ".lora_up.weight")
    else:                                   # transformer.<module>.lora_A / lora_B
        name, parts = (lambda m: "transformer." + m), (".lora_A.weight", ".lora_B.weight")
    if not fam.lora_pipeline:
        load_transformer_lora(net, lora_path)
        adapter = "default"
        how = f"peft through training.export.load_transformer_lora (diffusers has no PixArt load_lora_weights); {built}"
    else:
        cls = getattr(diffusers, fam.lora_pipeline)
        state, alphas = _state_and_alphas(cls, lora_path)
        net.load_lora_adapter(state, prefix=fam.denoiser, network_alphas=alphas, adapter_name="rayflow")
        adapter = "rayflow"
        how = f"diffusers {cls.__name__}.lora_state_dict + {fam.denoiser_class}.load_lora_adapter; {built}"
    got = get_peft_model_state_dict(net, adapter_name=adapter)
    # a file module is matched when the model's adapter holds its down and up weights unchanged
    matched = set()
    for key in got:
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            f = name(module)
            ok = all(f + part in tensors and torch.equal(got[module + mine].float(),
                                                           tensors[f + part].to(got[module + mine].dtype).float())
                     for part, mine in zip(parts, (".lora_A.weight", ".lora_B.weight")))
            if ok:
                matched.add(f)
    return {"matched": len(matched & set(modules)), "total": len(modules), "adapter_modules": len(got) // 2, "how": how}


def comfy_unet_config(arch: str, config: Dict) -> Dict:
    """ComfyUI's ``unet_config`` for a diffusers UNet2DConditionModel / PixArtTransformer2DModel
    config (the keys ComfyUI's model classes are built from)."""
    if arch.startswith("pixart"):
        return dict(image_model=arch, input_size=config["sample_size"], patch_size=config["patch_size"],
                    in_channels=config["in_channels"],
                    hidden_size=config["num_attention_heads"] * config["attention_head_dim"], depth=config["num_layers"],
                    num_heads=config["num_attention_heads"], caption_channels=config["caption_channels"],
                    model_max_length=T5_TOKENS, micro_condition=arch == "pixart_alpha",
                    pe_interpolation=config.get("interpolation_scale") or 1)
    chans = list(config["block_out_channels"])
    n, layers = len(chans), config["layers_per_block"]
    depth = config.get("transformer_layers_per_block", 1)
    depth = [depth] * n if isinstance(depth, int) else list(depth)
    down = [depth[i] if "CrossAttn" in t else 0 for i, t in enumerate(config["down_block_types"])]
    up = [depth[n - 1 - i] if "CrossAttn" in t else 0 for i, t in enumerate(config["up_block_types"])]
    heads = config.get("attention_head_dim", 8)
    out = dict(use_checkpoint=False, image_size=32, in_channels=config["in_channels"], out_channels=config["out_channels"],
               model_channels=chans[0], num_res_blocks=[layers] * n, channel_mult=[c // chans[0] for c in chans],
               transformer_depth=[d for d in down for _ in range(layers)],
               # ComfyUI pops the output depths from the end: the last entries are the deepest level's
               transformer_depth_output=[d for d in reversed(up) for _ in range(layers + 1)],
               transformer_depth_middle=depth[-1], use_spatial_transformer=True, legacy=False,
               use_linear_in_transformer=bool(config.get("use_linear_projection")),
               context_dim=config["cross_attention_dim"], adm_in_channels=None)
    if isinstance(heads, int):
        out.update(num_heads=heads, num_head_channels=-1)
    else:
        out.update(num_heads=-1, num_head_channels=chans[0] // heads[0])
    if config.get("addition_embed_type") == "text_time":
        out.update(num_classes="sequential", adm_in_channels=config["projection_class_embeddings_input_dim"])
    return out


def _comfy_model(family: str, tiny: bool):
    """ComfyUI's model of the family on the meta device, and how it was built: from
    :func:`comfy_unet_config`, or (``comfy_detects``) by ComfyUI's detection from the diffusers
    transformer's keys, which must pick the family's ``comfy_model`` class."""
    import comfy.model_detection
    import comfy.supported_models

    fam, den = REGISTRY[family], denoiser(family, tiny=tiny)
    meta = torch.device("meta")
    if not fam.comfy_detects:
        cls = getattr(comfy.supported_models, fam.comfy_model)
        return (cls(comfy_unet_config(fam.architecture, den.config)).get_model({}, device=meta),
                f"ComfyUI {cls.__name__} model (meta device)")
    converted = comfy.model_detection.convert_diffusers_mmdit(den.build(meta, torch.bfloat16).state_dict(), "")
    config = comfy.model_detection.model_config_from_unet(converted, "")
    if type(config).__name__ != fam.comfy_model:
        raise RuntimeError(f"ComfyUI detects the {fam.label} transformer as {type(config).__name__}, not {fam.comfy_model}")
    return (config.get_model(converted, "", device=meta),
            f"ComfyUI {type(config).__name__} model detected from the diffusers transformer's keys "
            f"(convert_diffusers_mmdit + model_config_from_unet, as load_diffusion_model; meta device)")


def keymatch_comfyui(family: str, lora_path: str, tiny: bool = False) -> Dict:
    """Map the LoRA file with ComfyUI's stock code (``comfy.lora.model_lora_keys_unet`` of the
    family's full-size ComfyUI model (``tiny``: the tiny one), built on the meta device, then
    ``comfy.lora.load_lora``); run with ComfyUI importable (``COMFYUI_PATH`` on ``sys.path``)."""
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.lora
    import comfy.lora_convert

    model, built = _comfy_model(family, tiny)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    tensors = load_file(lora_path)
    modules = lora_modules(tensors)
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(tensors), key_map)
    unmatched = [m for m in modules if m not in key_map]
    return {"matched": len(modules) - len(unmatched), "total": len(modules), "patches": len(patches),
            "unmatched": unmatched[:5],
            "how": f"{built} + comfy.lora.model_lora_keys_unet + comfy.lora.load_lora"}
