"""Single-file ``.safetensors`` base models (the original LDM layout ComfyUI users keep): loading,
architecture detection, bundled configs, and a full distillation run from one."""

import os
import shutil

import pytest
import torch

from training.distill import main
from training.models import load_base_model
from training.single_file import BUNDLED_CONFIGS, SingleFileError, find_comfyui_tokenizer
from training.tiny import build_tiny_sd15, build_tiny_sdxl, write_single_file

FAST = ["--resolution", "16", "--teacher-steps", "2", "--batch-size", "2", "--lora-rank", "2", "--lora-alpha", "2",
        "--shard-size", "2", "--log-every", "1"]


def _config_only(src: str, dst: str) -> str:
    """A diffusers folder with the configs and tokenizers of ``src`` and no weights."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    out = {}
    for arch, build in (("sd15", build_tiny_sd15), ("sdxl", build_tiny_sdxl)):
        folder = build(str(root / arch))
        out[arch] = (folder, write_single_file(folder, str(root / f"{arch}.safetensors")),
                     _config_only(folder, str(root / f"{arch}_config")))
    return out


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_single_file_loads_the_same_model_as_the_diffusers_folder(files, arch):
    folder, ckpt, config = files[arch]
    ref, got = load_base_model(folder), load_base_model(ckpt, model_config=config)
    assert got.architecture == arch and got.schedule_name == ref.schedule_name
    torch.testing.assert_close(got.schedule.alphas_cumprod, ref.schedule.alphas_cumprod)
    with torch.no_grad():
        cond_ref = ref.encode_prompts(["a red cat", "a dog on a tree"], torch.device("cpu"))
        cond_got = got.encode_prompts(["a red cat", "a dog on a tree"], torch.device("cpu"))
        assert cond_ref.keys() == cond_got.keys()
        for k in cond_ref:
            torch.testing.assert_close(cond_got[k], cond_ref[k])
        x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 250])
        torch.testing.assert_close(got.denoise(x, t, cond_ref, 64), ref.denoise(x, t, cond_ref, 64))
        torch.testing.assert_close(got.decode(x), ref.decode(x))


def test_distill_runs_from_a_single_file_checkpoint(files, tmp_path):
    from safetensors import safe_open

    _, ckpt, config = files["sdxl"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\na blue house\n", encoding="utf-8")
    out = tmp_path / "l.safetensors"
    rc = main([str(a) for a in ("--model", ckpt, "--model-config", config, "--prompts", prompts, "--output", out,
                                "--train-steps", 3, "--save-every", 2, *FAST)])
    assert rc == 0
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["rayflow.architecture"] == "sdxl" and f.metadata()["rayflow.train_steps"] == "3"
    with safe_open(str(tmp_path / "l-step000002.safetensors"), "pt") as f:    # --save-every snapshot
        assert f.metadata()["rayflow.train_steps"] == "2"


@pytest.mark.parametrize("arch,params", [("sd15", {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06}),
                                         ("sdxl", {"unet": 2567.46, "vae": 83.65, "text_encoder": 123.06,
                                                   "text_encoder_2": 694.66})])
def test_bundled_configs_describe_the_released_models(arch, params):
    """Parameter counts (millions) of SD1.5 and SDXL base 1.0 as released."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = os.path.join(BUNDLED_CONFIGS, arch)
    build = {"unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet")),
             "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae")),
             "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(root, subfolder="text_encoder")),
             "text_encoder_2": lambda: CLIPTextModelWithProjection(
                 CLIPTextConfig.from_pretrained(root, subfolder="text_encoder_2"))}
    for name, millions in params.items():
        with init_empty_weights():
            model = build[name]()
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions, name


def test_single_file_bad_inputs_end_with_one_clear_line(files, tmp_path, capsys, monkeypatch):
    _, ckpt, config = files["sd15"]
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n", encoding="utf-8")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04K\x01.")
    from safetensors.torch import save_file

    pixart = tmp_path / "pixart.safetensors"
    save_file({"t_embedder.mlp.0.weight": torch.zeros(2, 2), "y_embedder.y_proj.fc1.weight": torch.zeros(2, 2)}, str(pixart))
    unet_only = tmp_path / "unet_only.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2, 2)}, str(unet_only))
    cases = [
        ([corrupt], "not a valid .safetensors file"),
        ([pickled], "pickle-based checkpoint, which is never loaded"),
        ([pixart], "diffusers has no single-file loader for PixArt"),
        ([unet_only], "holds only part of a model"),
        ([ckpt, "--architecture", "sdxl"], "does not match the checkpoint, which is sd15"),
        ([ckpt, "--model-config", tmp_path], "--model-config must be a diffusers folder"),
        ([ckpt], "carries no tokenizer: set COMFYUI_PATH"),            # bundled configs, no ComfyUI around
        ([ckpt, "--model-config", files["sdxl"][2]], f"cannot load {ckpt} as sd15"),   # wrong family's config
    ]
    for args, message in cases:
        out = tmp_path / "never.safetensors"
        capsys.readouterr()
        rc = main([str(a) for a in ("--model", *args, "--prompts", prompts, "--output", out, "--train-steps", 1, *FAST)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (args, err)
        assert not out.exists()


def test_comfyui_tokenizer_is_found_next_to_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    root = tmp_path / "ComfyUI"
    tok = root / "comfy" / "sd1_tokenizer"
    tok.mkdir(parents=True)
    (tok / "vocab.json").write_text("{}")
    (tok / "merges.txt").write_text("")
    (root / "models" / "checkpoints").mkdir(parents=True)
    assert find_comfyui_tokenizer(str(root / "models" / "checkpoints" / "m.safetensors")) == str(tok)
    assert find_comfyui_tokenizer(str(tmp_path / "elsewhere" / "m.safetensors")) is None
    monkeypatch.setenv("COMFYUI_PATH", str(root))
    assert find_comfyui_tokenizer(str(tmp_path / "elsewhere" / "m.safetensors")) == str(tok)


def test_missing_tokenizer_folder_in_model_config_is_reported(files, tmp_path):
    _, ckpt, config = files["sd15"]
    bare = shutil.copytree(config, str(tmp_path / "cfg"), ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(SingleFileError, match="has no tokenizer/ folder"):
        load_base_model(ckpt, model_config=bare)


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set: ComfyUI's CLIP tokenizer files are not available")
def test_comfyui_tokenizer_files_give_the_clip_token_ids():
    from training.single_file import _tokenizers

    toks = _tokenizers("sdxl", "", os.path.join(os.environ["COMFYUI_PATH"], "models", "checkpoints", "x.safetensors"), True)
    ids = toks["tokenizer"]("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7] == 49407 and len(ids) == 77
    ids2 = toks["tokenizer_2"]("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids2[:7] == ids[:7] and ids2[7:] == [0] * 70          # OpenCLIP pads with "!" (id 0)
