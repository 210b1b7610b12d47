"""SD3 / SD3.5 and FLUX.1 in the trainer: detection, family defaults, the teacher against diffusers'
own pipelines, both phases end to end from a diffusers folder, the quantized (nf4 / int8) base, and
bad input. (The export read back by diffusers' load_lora_weights: tests/test_training_families.py.)"""

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open

from training.config import parse_args
from training.distill import main
from training.models import ModelError, detect_architecture, load_base_model
from training.tiny_flow import build_tiny_flux, build_tiny_sd3


FAST = ["--resolution", "32", "--teacher-steps", "3", "--batch-size", "2", "--lora-rank", "4", "--lora-alpha", "8",
        "--shard-size", "2", "--log-every", "2", "--train-steps", "3"]
PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux_dev": "FluxPipeline", "flux_schnell": "FluxPipeline"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_families")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cat\na blue house\n", encoding="utf-8")
    paths = {"sd3": build_tiny_sd3(str(root / "sd3")), "flux_dev": build_tiny_flux(str(root / "flux_dev")),
             "flux_schnell": build_tiny_flux(str(root / "flux_schnell"), schnell=True)}
    return paths, str(prompts)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from training.tiny import build_tiny_sd15

    return build_tiny_sd15(str(tmp_path_factory.mktemp("vp") / "sd15"))


def test_detection_and_family_defaults(models):
    paths, prompts = models
    for arch, path in paths.items():
        assert detect_architecture(path) == arch
    cfg = parse_args(["--model", paths["flux_dev"], "--prompts", prompts, "--output", "o.safetensors"])
    assert (cfg.resolution, cfg.teacher_solver, cfg.teacher_steps, cfg.teacher_cfg) == (1024, "euler", 28, 1.0)
    assert "add_q_proj" in cfg.lora_targets and "proj_mlp" in cfg.lora_targets
    cfg = parse_args(["--model", paths["sd3"], "--prompts", prompts, "--output", "o.safetensors", "--teacher-cfg", "6",
                      "--teacher-solver", "dpmsolver++", "--preset", "one-step"])
    assert (cfg.teacher_cfg, cfg.teacher_solver, cfg.recommended_steps, cfg.resolution) == (6.0, "dpmsolver++", 1, 1024)
    assert parse_args(["--model", paths["flux_schnell"], "--prompts", prompts, "--output", "o.safetensors"]
                      ).teacher_steps == 4


@pytest.mark.parametrize("pipeline, transformer, message", [
    ("Flux2Pipeline", "Flux2Transformer2DModel", "FLUX.2 (Flux2Pipeline) is not a family this trainer distils"),
    ("QwenImagePipeline", "QwenImageTransformer2DModel", "Qwen-Image (QwenImagePipeline) is not a family"),
    ("WanPipeline", "WanTransformer3DModel", "Wan (a video model) (WanPipeline) is not a family"),
])
def test_an_unsupported_family_is_one_line_before_any_work(models, tmp_path, capsys, pipeline, transformer, message):
    paths, prompts = models
    folder = tmp_path / "m"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "transformer": ["diffusers", transformer]}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": transformer}))
    out = tmp_path / "o.safetensors"
    assert main(["--model", str(folder), "--prompts", prompts, "--output", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "supported: SD1.5, SDXL" in err[0], err
    assert not out.exists() and not (tmp_path / "o.work").exists()
    with pytest.raises(ModelError, match=message.split(" (")[0]):
        detect_architecture(str(folder))


@pytest.mark.parametrize("arch, flags, message", [
    ("flux_dev", ["--ray-path", "linear"], "--ray-path linear is a path of the epsilon (VP) models; FLUX.1-dev is a "
                                           "flow-matching model"),
    ("sd3", ["--teacher-solver", "ddim"], "--teacher-solver ddim is for epsilon (VP) models; SD3 / SD3.5 takes euler"),
    ("flux_dev", ["--teacher-cfg", "4"], "FLUX.1-dev is guidance-distilled: --teacher-cfg must be 1 (its guidance "
                                         "embedding is --guidance)"),
    ("flux_schnell", ["--teacher-cfg", "2"], "FLUX.1-schnell is guidance-distilled: --teacher-cfg must be 1"),
    ("sd3", ["--guidance", "3"], "--guidance sets FLUX.1-dev's guidance embedding; SD3 / SD3.5 has none (its teacher "
                                 "uses classifier-free guidance: --teacher-cfg)"),
    ("flux_schnell", ["--guidance", "3"], "--guidance sets FLUX.1-dev's guidance embedding; FLUX.1-schnell has none"),
    ("sd15", ["--teacher-solver", "euler"], "--teacher-solver euler is for flow-matching models; SD1.5 takes ddim or "
                                            "dpmsolver++"),
    ("sd15", ["--guidance", "3.5"], "--guidance sets FLUX.1-dev's guidance embedding; SD1.5 has none"),
    ("sd15", ["--base-precision", "nf4"], "--base-precision nf4 quantizes the transformer of SD3 / FLUX.1 models; "
                                          "for SD1.5 use bf16 or fp16"),
])
def test_an_option_of_the_other_kind_is_one_line_before_any_work(models, sd15, tmp_path, capsys, arch, flags, message):
    paths, prompts = models
    model = paths[arch] if arch != "sd15" else sd15
    out = tmp_path / "o.safetensors"
    capsys.readouterr()
    assert main(["--model", model, "--prompts", prompts, "--output", str(out), *FAST, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not out.exists() and not (tmp_path / "o.work").exists()


@pytest.mark.parametrize("key, name", [("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "SD3 / SD3.5"),
                                       ("double_blocks.0.img_attn.qkv.weight", "FLUX.1")])
def test_a_flow_single_file_is_one_line_pointing_to_the_diffusers_folder(models, tmp_path, capsys, key, name):
    from safetensors.torch import save_file

    _, prompts = models
    path = str(tmp_path / "model.safetensors")
    save_file({key: torch.zeros(2, 2)}, path)
    out = tmp_path / "o.safetensors"
    assert main(["--model", path, "--prompts", prompts, "--output", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is a {name} single file: the trainer distils {name} from its diffusers folder" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("arch, missing, what", [
    ("sd3", "text_encoder_3", "SD3 / SD3.5 needs its T5 text encoder (text_encoder_3/)"),
    ("sd3", "text_encoder_2", "SD3 / SD3.5 needs its text encoder 2 (text_encoder_2/)"),
    ("flux_dev", "text_encoder_2", "FLUX.1-dev needs its T5 text encoder (text_encoder_2/)"),
    ("flux_dev", "text_encoder", "FLUX.1-dev needs its text encoder (text_encoder/)"),
])
def test_a_missing_text_encoder_is_one_line(models, tmp_path, capsys, arch, missing, what):
    paths, prompts = models
    folder = tmp_path / arch
    shutil.copytree(paths[arch], folder)
    shutil.rmtree(folder / missing)
    out = tmp_path / "o.safetensors"
    assert main(["--model", str(folder), "--prompts", prompts, "--output", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and what in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("arch", ["sd3", "flux_dev"])
def test_the_euler_teacher_is_diffusers_own_pipeline(models, arch):
    """Phase 1's teacher (encode_prompt, the velocity call with SD3's CFG or FLUX's guidance embedding,
    flow Euler on the trailing levels from t = 1) lands where diffusers' pipeline lands from the same
    latents and sigmas."""
    import diffusers

    from training.data import item_noise, teacher_trajectory

    paths, _ = models
    model = load_base_model(paths[arch], resolution=32)
    dev = torch.device("cpu")
    z = item_noise(0, torch.arange(2), (16, 16, 16))
    cond, uncond = model.encode_prompts(["a red cat", "a dog"], dev), model.encode_prompts(["", ""], dev)
    w = 3.0 if arch == "sd3" else 1.0
    x0, preds, alphas = teacher_trajectory(model, z, cond, uncond, "euler", 3, w, 32)
    assert preds.shape[0] == 3 and float(alphas[0]) == 0.0 and torch.equal(preds[0], z)   # n at t = 1 is z
    pipe = getattr(diffusers, PIPELINES[arch]).from_pretrained(paths[arch])
    u = ((model.schedule.ray_timesteps(3).double() + 1) / model.schedule.num_timesteps).tolist()
    kw = dict(prompt=["a red cat", "a dog"], height=32, width=32, num_inference_steps=3, sigmas=u, output_type="latent")
    if arch == "sd3":
        ref = pipe(latents=z, guidance_scale=w, negative_prompt=["", ""], **kw).images
    else:
        packed = diffusers.FluxPipeline._pack_latents(z, 2, 16, 16, 16)
        ref = diffusers.FluxPipeline._unpack_latents(pipe(latents=packed, guidance_scale=3.5, **kw).images, 128, 128, 8)
    torch.testing.assert_close(x0, ref.float(), rtol=1e-4, atol=1e-4)


def test_the_dpm_solver_teacher_is_second_order_on_a_gaussian():
    """The flow DPM-Solver++ (2M) on the model's trailing levels converges at second order where flow
    Euler converges at first, on data N(m, s^2) whose exact flow map is x0 = m + s z."""
    from rayflow import FlowSchedule
    from training.flow_teacher import make_flow_scheduler

    m, s = 0.7, 0.3

    def velocity(x, t):
        var = (1 - t) ** 2 * s * s + t * t
        return t * (x - (1 - t) * m) / var - (m + (1 - t) * s * s * (x - (1 - t) * m) / var)

    z = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    errors = {}
    for solver in ("euler", "dpmsolver++"):
        for n in (16, 32):
            sig = FlowSchedule.shifted(3.0).ray_sigmas(n, torch.float64)
            sched, x = make_flow_scheduler(sig, solver), z.clone()
            for i, t in enumerate(sched.timesteps):
                x = sched.step(velocity(x, float(sig[i])), t, x).prev_sample
            errors[solver, n] = float((x - (m + s * z)).abs().max())
    assert errors["euler", 16] / errors["euler", 32] < 2.5            # first order
    assert errors["dpmsolver++", 16] / errors["dpmsolver++", 32] > 3.5  # second order
    assert errors["dpmsolver++", 32] < errors["euler", 32] / 3


@pytest.mark.parametrize("arch", ["sd3", "flux_dev", "flux_schnell"])
def test_both_phases_end_to_end_and_the_file_s_metadata(models, tmp_path, arch):
    from rayflow.lora_file import validate_lora
    from training.data import load_cache

    paths, prompts = models
    out = tmp_path / "lora.safetensors"
    solver = ["--teacher-solver", "dpmsolver++"] if arch == "sd3" else []
    assert main(["--model", paths[arch], "--prompts", prompts, "--output", str(out), *FAST, *solver]) == 0
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["rayflow.architecture"] == arch and meta["rayflow.path"] == "flow" and meta["rayflow.schedule"] == "flow"
    shift = {"sd3": 3.0, "flux_schnell": 1.0, "flux_dev": math.exp(0.5 + 0.65 * (64 - 256) / 3840)}[arch]   # 32 px, VAE factor 2: 64 tokens
    assert float(meta["rayflow.shift"]) == pytest.approx(shift, rel=1e-5) and meta["rayflow.resolution"] == "32"
    assert meta.get("rayflow.recommended_guidance") == ("3.5" if arch == "flux_dev" else None)
    assert meta["rayflow.teacher_solver"] == ("dpmsolver++" if arch == "sd3" else "euler")
    lora = validate_lora(str(out))
    assert lora.coverage == 1.0 and lora.declared == int(meta["rayflow.lora_modules"])
    assert keys and all(k.startswith(("transformer.transformer_blocks.", "transformer.single_transformer_blocks."))
                        for k in keys)
    if arch == "sd3":       # the last block's text query feeds nothing (context_pre_only): no adapter there
        assert not any("transformer_blocks.1.attn.add_q_proj" in k for k in keys)
    cache = load_cache(str(tmp_path / "lora.work" / "cache"))
    assert set(cache.cond) == {"cond", "pooled"} and cache.x0.shape[1:] == (16, 16, 16)
    assert torch.isfinite(cache.x0).all() and torch.isfinite(cache.eps_mu).all()
    assert (tmp_path / "lora.work" / "validation_final.png").is_file()


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_quantized_base_trains_a_float32_lora(models, tmp_path, kind):
    """--base-precision nf4 / int8: the transformer's linear layers are bitsandbytes layers, the LoRA
    weights fp32, and the run exports the same modules as a bf16 run."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from training.config import DistillConfig
    from training.trainer import Trainer

    paths, prompts = models
    out = tmp_path / "q.safetensors"
    assert main(["--model", paths["flux_dev"], "--prompts", prompts, "--output", str(out), *FAST,
                 "--base-precision", kind]) == 0
    model = load_base_model(paths["flux_dev"], resolution=32, base_precision=kind, dtype=torch.bfloat16)
    layer = {"nf4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}[kind]
    assert isinstance(model.unet.transformer_blocks[0].attn.to_q, layer) and model.dtype == torch.bfloat16
    cfg = DistillConfig(model=paths["flux_dev"], prompts=prompts, output=str(out), lora_rank=4, lora_alpha=4,
                        lora_targets=",".join(["to_q", "proj_mlp"]), sigma=0.1)
    from training.data import load_cache
    from accelerate import Accelerator

    trainer = Trainer(cfg, model, load_cache(str(tmp_path / "q.work" / "cache")), Accelerator(cpu=True))
    assert trainer.params and all(p.dtype == torch.float32 for p in trainer.params)
    with safe_open(str(out), "pt") as f:
        assert any(".proj_mlp.lora_A" in k for k in f.keys()) and f.metadata()["rayflow.base_precision"] == kind
