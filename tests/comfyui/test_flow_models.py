"""SD3 and FLUX.1 in real ComfyUI (issue 32's acceptance): a LoRA distilled end to end by
``python -m training.distill`` from a tiny diffusers folder loads with every module applied through the
RayFlow LoRA Loader and the stock LoraLoader, a RayFlow Sampler run on it decodes to a finite,
non-constant image, and the sampler's steps are docs/method.md's (eq. 10.5, 10.9) on ComfyUI's own
model sampling. The tiny models load through ComfyUI's ``load_diffusion_model`` (``tiny_flow.py``:
FLUX's hard-coded sizes read from the weights); conditioning tensors of the tiny text encoders' widths
stand in for ComfyUI's full-size text encoders."""

import math
import os
import subprocess
import sys

import pytest

from comfy_env import REPO  # noqa: I001  (skips without ComfyUI)
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import torch  # noqa: E402
from extension import comfy_nodes, load_extension  # noqa: E402

import tiny_flow  # noqa: E402
from tiny_checkpoint import build_vae_state_dict  # noqa: E402

FAMILIES = {"sd3": {}, "sd35_medium": {}, "flux_dev": {"guidance": 3.5}, "flux_schnell": {}}
ARCH = {"sd35_medium": "sd3"}          # SD3.5 Medium (MMDiT-X dual attention) is an SD3-family LoRA


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``{key: (diffusers folder, LoRA path)}``: tiny SD3 / SD3.5 Medium / FLUX.1-dev / -schnell folders and a LoRA
    that ``python -m training.distill`` made from each (2 prompts, 3 teacher steps, 2 LoRA steps)."""
    from training.tiny_flow import build_tiny_flux, build_tiny_sd3

    root = tmp_path_factory.mktemp("flow")
    (root / "prompts.txt").write_text("a red cat\na blue house\n")
    builds = {"sd3": build_tiny_sd3, "sd35_medium": lambda d: build_tiny_sd3(d, dual_attention=True),
              "flux_dev": build_tiny_flux, "flux_schnell": lambda d: build_tiny_flux(d, schnell=True)}
    out = {}
    for arch, build in builds.items():
        folder, lora = build(str(root / arch)), str(root / f"rayflow-{arch}.safetensors")
        cmd = [sys.executable, "-m", "training.distill", "--model", folder, "--prompts", str(root / "prompts.txt"),
               "--output", lora, "--resolution", "32", "--teacher-steps", "3", "--batch-size", "2", "--shard-size", "2",
               "--train-steps", "2", "--lora-rank", "4", "--lora-alpha", "4"]
        done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
        assert done.returncode == 0, f"training.distill failed on the tiny {arch}:\n{done.stderr[-3000:]}"
        out[arch] = folder, lora
    return out


@pytest.fixture(scope="module")
def vae():
    """ComfyUI's VAE of the SD3 / FLUX shape (16 latent channels), random weights."""
    return comfy.sd.VAE(sd=build_vae_state_dict(16, prefix=""))


def _lora_loader(monkeypatch, path):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_full_path", lambda kind, name: path if name == os.path.basename(path) else None)
    return comfy_nodes()["RayFlowLoraLoader"]


def _adapters(model):
    """The LoRA adapters patched into ``model``: fused weights (SD3's qkv, FLUX's linear1) hold one per module."""
    return sum(len(v) for v in model.patches.values())


def _modules(path):
    lora = comfy.utils.load_torch_file(path, safe_load=True)
    return lora, {k[: -len(".lora_A.weight")] for k in lora if k.endswith(".lora_A.weight")}


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_comfyui_model_velocity_is_the_trainer_s(trained, arch):
    """ComfyUI's denoised output of the tiny transformer is x - t v with the trainer's v (SD3's input
    1000 t, FLUX's t and guidance embedding, FLUX's latent packing) at every level."""
    from training.models import load_base_model

    folder, _ = trained[arch]
    model = tiny_flow.load_transformer(folder)
    ours = load_base_model(folder, resolution=32)
    cond = tiny_flow.conditioning(model, seed=1, **FAMILIES[arch])
    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    for t in (1.0, 0.7, 0.2):
        sigma = torch.full((2,), t)
        extra = {"y": cond[0][1]["pooled_output"].expand(2, -1)}
        if "guidance" in cond[0][1]:
            extra["guidance"] = torch.full((2,), cond[0][1]["guidance"])
        with torch.no_grad():
            comfy_x0 = model.model.apply_model(x, sigma, c_crossattn=cond[0][0].expand(2, -1, -1), **extra)
            v = ours.velocity(x, sigma, {"cond": cond[0][0].expand(2, -1, -1), "pooled": extra["y"]})
        torch.testing.assert_close(comfy_x0, x - t * v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_distilled_lora_applies_every_module_in_both_loaders_and_samples_an_image(trained, vae, arch, monkeypatch):
    folder, path = trained[arch]
    model = tiny_flow.load_transformer(folder)
    lora, modules = _modules(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        assert len(modules) == int(f.metadata()["rayflow.lora_modules"])
    if arch == "sd35_medium":                     # the MMDiT-X second attention is adapted and mapped too
        assert any(".attn2." in m for m in modules)
    # the stock LoraLoader's path (comfy.sd.load_lora_for_models) patches every module
    stock, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 1.0)
    assert _adapters(stock) - _adapters(model) == len(modules) > 0
    # ours: every module, and the settings the sampler reads
    (ray,) = _lora_loader(monkeypatch, path).execute(model, os.path.basename(path), 1.0)
    assert _adapters(ray) - _adapters(model) == len(modules)
    settings = ray.model_options["rayflow"]
    assert settings["path"] == "flow" and settings["architecture"] == ARCH.get(arch, arch)
    assert settings["guidance"] == (3.5 if arch == "flux_dev" else None)
    # the RayFlow Sampler on the LoRA'd model, FLUX.1-dev's guidance through the stock FluxGuidance node
    cond = tiny_flow.conditioning(ray, seed=3)
    if arch == "flux_dev":
        from comfy_extras.nodes_flux import FluxGuidance

        (cond,) = FluxGuidance.execute(cond, settings["guidance"])
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    (out,) = comfy_nodes()["RayFlowSampler"].execute(ray, 7, 4, 1.0, cond, cond, latent, 1.0, 0.0, 0.0)
    with torch.no_grad():
        image = vae.decode(out["samples"])
    assert image.shape[-1] == 3 and torch.isfinite(image).all() and float(image.std()) > 1e-3


def _ray_run(model, cond, sigmas, eta, seed=11):
    """A Ray sampler run through comfy.sample.sample_custom, recording (x, denoised) at every step."""
    sampling = load_extension().nodes.sampling

    seen = []
    latent = torch.zeros(1, 16, 4, 4)
    noise = comfy.sample.prepare_noise(latent, seed)
    out = comfy.sample.sample_custom(model, noise, 1.0, sampling.ray_ksampler(0.0, eta), sigmas, cond, cond, latent,
                                     callback=lambda i, x0, x, total: seen.append((x.clone(), x0.clone())),
                                     disable_pbar=True, seed=seed)
    return out, seen


@pytest.mark.parametrize("arch", ["sd3", "flux_dev"])
def test_ray_steps_are_the_method_s_on_comfyui_model_sampling(trained, arch, monkeypatch):
    """eq. 10.9: the RayFlow Scheduler's sigmas are the trailing levels of the model's own table, from 1;
    eq. 10.5: eta 0 is ComfyUI's own Euler sampler on the same sigmas, and an eta 1 step is
    x' = (1 - s) x0 + s mu + sqrt(s^2 - rho^2) (n - mu) + sigma rho xi with the sampler's seeded xi."""
    import rayflow

    folder, path = trained[arch]
    (model,) = _lora_loader(monkeypatch, path).execute(tiny_flow.load_transformer(folder), os.path.basename(path), 1.0)
    sampling_obj = model.get_model_object("model_sampling")
    (sig,) = comfy_nodes()["RayFlowScheduler"].execute(model, 4, 1.0)
    table = sampling_obj.sigmas
    T = table.numel()
    torch.testing.assert_close(sig, torch.cat([table[[T - 1, 3 * T // 4 - 1, T // 2 - 1, T // 4 - 1]], torch.zeros(1)]))
    assert float(sig[0]) == 1.0
    shift = 3.0 if arch == "sd3" else math.exp(sampling_obj.shift)
    torch.testing.assert_close(sig[:-1].double(), rayflow.time_shift(torch.tensor([1.0, 0.75, 0.5, 0.25]), shift),
                               rtol=1e-5, atol=1e-6)
    cond = tiny_flow.conditioning(model, seed=5, **FAMILIES[arch])
    ray, _ = _ray_run(model, cond, sig, eta=0.0)
    latent = torch.zeros(1, 16, 4, 4)
    euler = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, 11), 1.0,
                                       comfy.samplers.sampler_object("euler"), sig, cond, cond, latent, disable_pbar=True,
                                       seed=11)
    torch.testing.assert_close(ray, euler, rtol=1e-4, atol=1e-5)
    # eta = 1: every step by the flow-coordinates formula, with the sampler's own noise draws
    _, seen = _ray_run(model, cond, sig, eta=1.0)
    sigma_ray = model.model_options["rayflow"]["sigma"]
    x_start = seen[0][0]
    mu = x_start                                           # noise mode at t = 1: the seeded start itself
    draws = rayflow.seeded_noise_sampler(x_start, 11)
    for i in range(3):
        (x, x0), x_next = seen[i], seen[i + 1][0]
        t, s = float(sig[i]), float(sig[i + 1])
        n_hat = (x - (1 - t) * x0) / t
        ratio = (s / (1 - s)) / (t / (1 - t)) if t < 1 else 0.0
        rho = s * math.sqrt(1 - ratio ** 2)
        want = (1 - s) * x0 + s * mu + math.sqrt(s * s - rho * rho) * (n_hat - mu) + sigma_ray * rho * draws(None, None)
        torch.testing.assert_close(x_next, want, rtol=1e-4, atol=1e-4)


def test_flux_scheduler_follows_the_stock_model_sampling_flux_node(trained):
    """FLUX at 512 x 768: the stock ModelSamplingFlux node sets mu from the size, and the RayFlow
    Scheduler reads the patched table (e^mu = the trainer's shift at that resolution, eq. 10.9)."""
    import rayflow
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux

    folder, _ = trained["flux_dev"]
    (patched,) = ModelSamplingFlux().patch(tiny_flow.load_transformer(folder), 1.15, 0.5, 512, 768)
    (sig,) = comfy_nodes()["RayFlowScheduler"].execute(patched, 4, 1.0)
    want = rayflow.time_shift(torch.tensor([1.0, 0.75, 0.5, 0.25]), math.exp(rayflow.flux_mu(512, 768)))
    torch.testing.assert_close(sig[:-1].double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lora_arch, model_arch, message", [
    ("sd3", "flux_dev", "is a RayFlow LoRA for SD3 / SD3.5, but the loaded model is FLUX.1-dev"),
    ("flux_dev", "sd3", "is a RayFlow LoRA for FLUX.1-dev, but the loaded model is SD3 / SD3.5"),
    ("flux_dev", "flux_schnell", "is a RayFlow LoRA for FLUX.1-dev, but the loaded model is FLUX.1-schnell"),
])
def test_a_lora_of_another_flow_family_is_one_sentence(trained, lora_arch, model_arch, message, monkeypatch):
    path = trained[lora_arch][1]
    with pytest.raises(Exception, match=message) as err:     # the pack's LoraFileError (a ValueError)
        _lora_loader(monkeypatch, path).execute(tiny_flow.load_transformer(trained[model_arch][0]),
                                                os.path.basename(path), 1.0)
    assert type(err.value).__name__ == "LoraFileError" and str(err.value).count(";") == 1


def test_a_vp_lora_on_a_flow_model_is_one_sentence(trained, tmp_path, monkeypatch):
    from comfy_env import SD15_META
    from safetensors.torch import save_file

    path = str(tmp_path / "rayflow-sd15.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 2),
               "lora_unet_x.alpha": torch.tensor(2.0)}, path, metadata=SD15_META)
    with pytest.raises(ValueError, match=r"for SD1.5 \(an epsilon-prediction \(VP\) model\), but the loaded model is "
                                            r"FLUX.1-dev \(a flow-matching model\)"):
        _lora_loader(monkeypatch, path).execute(tiny_flow.load_transformer(trained["flux_dev"][0]),
                                                os.path.basename(path), 1.0)
