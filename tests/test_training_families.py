"""SDXL and PixArt families: detection, both phases end to end on tiny models, and exported LoRA
files that reproduce the trained (peft) model exactly when loaded by diffusers."""

import os

import pytest
import torch
from safetensors import safe_open

from training.distill import main
from training.models import detect_architecture, load_base_model
from training.tiny import build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl
from training.tiny_flow import build_tiny_flux, build_tiny_sd3

from lora_models import ALPHA, RANK, random_lora_model

FAST = ["--resolution", "16", "--teacher-steps", "3", "--batch-size", "2", "--lora-rank", "4", "--lora-alpha", "8",
        "--shard-size", "2", "--log-every", "2", "--train-steps", "4"]
BUILDERS = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl, "pixart_alpha": build_tiny_pixart,
            "pixart_sigma": lambda d: build_tiny_pixart(d, sigma=True), "sd3": build_tiny_sd3, "flux_dev": build_tiny_flux}
# the diffusers pipelines whose load_lora_weights reads the exported files (PixArt has none: peft)
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
             "flux_dev": "FluxPipeline"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cat\na blue house\n", encoding="utf-8")
    return {arch: build(str(root / arch)) for arch, build in BUILDERS.items()}, str(prompts)


def test_detection_by_classes_and_configs(models, tmp_path):
    paths, _ = models
    for arch, path in paths.items():
        assert detect_architecture(path) == arch
    # a PixArt folder without the pipeline class name is told apart by the transformer config
    import json
    import shutil

    for arch in ("pixart_alpha", "pixart_sigma"):
        copy = tmp_path / arch
        shutil.copytree(paths[arch], copy)
        idx = json.loads((copy / "model_index.json").read_text())
        idx["_class_name"] = "DiffusionPipeline"
        (copy / "model_index.json").write_text(json.dumps(idx))
        assert detect_architecture(str(copy)) == arch


@pytest.mark.parametrize("arch", ["sdxl", "pixart_alpha", "pixart_sigma"])
def test_both_phases_end_to_end(models, tmp_path, arch):
    from training.data import load_cache

    paths, prompts = models
    out = tmp_path / "lora.safetensors"
    assert main(["--model", paths[arch], "--prompts", prompts, "--output", str(out), *FAST]) == 0
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["rayflow.architecture"] == arch and meta["rayflow.format"] == "1"
    assert meta["rayflow.schedule"] == ("scaled_linear" if arch == "sdxl" else "linear")
    from rayflow.lora_file import validate_lora
    lora = validate_lora(str(out))                # the trainer's metadata passes the loader's schema
    assert lora.coverage == 1.0 and lora.declared == int(meta["rayflow.lora_modules"])
    if arch == "sdxl":
        assert keys and all(k.startswith("lora_unet_") for k in keys)
    else:
        assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)
        assert any(".ff.net.0.proj." in k for k in keys) and any(".attn2.to_k." in k for k in keys)
    cache = load_cache(str(tmp_path / "lora.work" / "cache"))
    extra = {"sdxl": "pooled"}.get(arch, "mask")
    assert set(cache.cond) == {"cond", extra} and cache.cond[extra].shape[0] == 2
    assert torch.isfinite(cache.x0).all() and torch.isfinite(cache.eps_mu).all()
    assert (tmp_path / "lora.work" / "validation_final.png").is_file()


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "pixart_alpha", "pixart_sigma", "sd3", "flux_dev"])
def test_exported_file_reproduces_the_trained_model_in_diffusers(models, tmp_path, arch):
    import diffusers

    from training.export import export_state_dict, load_transformer_lora, write_lora

    paths, _ = models
    model, sd = random_lora_model(paths[arch], arch, seed=1)
    x, t = torch.randn(2, model.latent_channels, 8, 8), torch.tensor([999, 400])
    cond = model.encode_prompts(["a red cat", "a dog"], torch.device("cpu"))
    with torch.no_grad():
        want = model.denoise(x, t, cond, 64)
    path = str(tmp_path / "l.safetensors")
    write_lora(path, export_state_dict(arch, sd, RANK, ALPHA), {"rayflow.architecture": arch})

    fresh = load_base_model(paths[arch], resolution=64)
    if arch.startswith("pixart"):
        load_transformer_lora(fresh.unet, path)
    else:
        extra = {} if arch != "sd15" else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = getattr(diffusers, PIPELINES[arch]).from_pretrained(paths[arch], **extra)
        with torch.no_grad():
            base = fresh.denoise(x, t, cond, 64)
        pipe.load_lora_weights(path)
        fresh.unet = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    with torch.no_grad():
        got = fresh.denoise(x, t, cond, 64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if not arch.startswith("pixart"):
        assert not torch.allclose(base, want, atol=1e-3)


@pytest.mark.parametrize("arch", ["sd15", "pixart_alpha"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_export_is_the_rounded_lora_at_half_the_size(models, tmp_path, arch, precision):
    """--save-precision fp16/bf16 stores the LoRA weights rounded to that dtype (alpha stays float32):
    loading the file gives exactly the model whose LoRA weights were rounded, and the file is about
    half the float32 one."""
    from safetensors.torch import load_file

    from training.export import SAVE_DTYPES, export_state_dict, load_transformer_lora, write_lora

    paths, _ = models
    dtype = SAVE_DTYPES[precision]
    model, sd = random_lora_model(paths[arch], arch, seed=1)
    files = {}
    for prec in ("fp32", precision):
        files[prec] = str(tmp_path / f"{prec}.safetensors")
        write_lora(files[prec], export_state_dict(arch, sd, RANK, ALPHA, prec), {"rayflow.architecture": arch})
    tensors = load_file(files[precision])
    assert {v.dtype for k, v in tensors.items() if not k.endswith(".alpha")} == {dtype}
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if k.endswith(".alpha"))
    assert os.path.getsize(files[precision]) < 0.6 * os.path.getsize(files["fp32"])

    with torch.no_grad():             # the trained model with its LoRA weights rounded to the saved dtype
        for name, p in model.unet.named_parameters():
            if "lora_" in name:
                p.copy_(p.to(dtype).float())
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 400])
    cond = model.encode_prompts(["a red cat", "a dog"], torch.device("cpu"))
    with torch.no_grad():
        want = model.denoise(x, t, cond, 64)
    fresh = load_base_model(paths[arch])
    if arch.startswith("pixart"):
        load_transformer_lora(fresh.unet, files[precision])
    else:
        import diffusers

        pipe = diffusers.StableDiffusionPipeline.from_pretrained(paths[arch], safety_checker=None, feature_extractor=None,
                                                                 requires_safety_checker=False)
        pipe.load_lora_weights(files[precision])
        fresh.unet = pipe.unet
    with torch.no_grad():
        got = fresh.denoise(x, t, cond, 64)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_architecture_override_must_match_the_model(models, tmp_path, capsys):
    paths, prompts = models
    out = tmp_path / "x.safetensors"
    rc = main(["--model", paths["sdxl"], "--prompts", prompts, "--output", str(out), "--architecture", "sd15", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not match the model, which is sdxl" in err[0]
    assert not out.exists()
