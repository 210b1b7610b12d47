"""The diffusers-side reader of kohya-form RayFlow LoRAs (``training.export.load_unet_lora``, behind
``proxy.sampling.load_lora_unet``, the demo and the benchmarks): the loader node's validation
(``validate_lora`` against the net's layers) and nothing raw. Every mutant of the fuzz test is refused
with one ``LoraFileError`` exactly when the validator refuses it, and an accepted one patches the net
with finite weights equal to ComfyUI's merge; a valid file gives diffusers' own loader's UNet."""

import random

import pytest
import torch

from rayflow.lora_file import LoraFileError, validate_lora
from test_lora_fuzz import canonical, mutants
from tiny_lora import LAYERS, apply, model_weights, write_valid_lora
from training.export import load_unet_lora


# the module path of each layer of tiny_lora.LAYERS (its kohya name is this path with "." -> "_")
PATHS = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
         "lora_unet_down_blocks_0_resnets_0_conv1": "down_blocks.0.resnets.0.conv1",
         "lora_unet_down_blocks_0_attentions_0_proj_in": "down_blocks.0.attentions.0.proj_in",
         "lora_unet_conv_out": "conv_out"}


def _net(weights):
    """A module tree with the Linear/Conv2d layers of ``tiny_lora.LAYERS`` at ``PATHS``, holding ``weights``."""
    root = torch.nn.Module()
    for kohya, path in PATHS.items():
        shape, parent = LAYERS[kohya], root
        *parents, leaf = path.split(".")
        for p in parents:
            if not hasattr(parent, p):
                parent.add_module(p, torch.nn.Module())
            parent = getattr(parent, p)
        layer = torch.nn.Linear(shape[1], shape[0], bias=False) if len(shape) == 2 else \
            torch.nn.Conv2d(shape[1], shape[0], shape[2], bias=False)
        with torch.no_grad():
            layer.weight.copy_(weights[kohya])
        parent.add_module(leaf, layer)
    return root


def _merged(net):
    """``{kohya name: weight}`` after merging the peft adapters into the layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, module in net.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            out["lora_unet_" + name.replace(".", "_")] = module.get_base_layer().weight.detach().clone()
    return out


def test_the_test_net_has_the_layers_of_the_fuzz_model():
    from training.lora_targets import lora_targets

    assert lora_targets(_net(model_weights())) == LAYERS


@pytest.mark.parametrize("require_rayflow", [True, False], ids=["rayflow-files", "also-foreign-kohya"])
def test_every_mutant_is_refused_as_the_validator_refuses_it_or_applied_like_comfyui(tmp_path, require_rayflow):
    """With ``require_rayflow=False`` (the demo's reader, which also loads the LCM-LoRA baseline) a
    file without RayFlow metadata gets the same tensor checks instead of a refusal."""
    base_path = write_valid_lora(str(tmp_path / "base.safetensors"))
    with open(base_path, "rb") as f:
        base = canonical(f.read())
    weights = model_weights()
    path = str(tmp_path / "mutant.safetensors")
    counts = {"refused": 0, "accepted": 0}
    for label, _, data in mutants(base, random.Random(19)):
        with open(path, "wb") as f:
            f.write(data)
        try:
            expected = validate_lora(path, LAYERS, require_rayflow=require_rayflow)
        except LoraFileError as exc:
            expected = exc
        net = _net(weights)
        try:
            load_unet_lora(net, path, require_rayflow=require_rayflow)
        except LoraFileError as exc:          # the same sentence the loader node gives
            assert isinstance(expected, LoraFileError) and str(exc) == str(expected), label
            counts["refused"] += 1
            continue
        assert not isinstance(expected, LoraFileError), f"{label}: applied, but the validator refuses it: {expected}"
        merged, want = _merged(net), apply(weights, expected)
        assert merged.keys() == set(expected.modules), label
        for m, w in merged.items():
            assert bool(torch.isfinite(w).all()), f"{label}: non-finite weights after loading"
            torch.testing.assert_close(w, want[m], rtol=1e-4, atol=1e-5, msg=label)
        counts["accepted"] += 1
    assert counts["accepted"] >= 10 and counts["refused"] >= 250, counts


def test_a_valid_file_gives_the_unet_of_diffusers_own_loader(tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from training.tiny import build_tiny_sd15
    from training.lora_targets import lora_targets

    model = build_tiny_sd15(str(tmp_path / "m"))
    fresh = lambda: UNet2DConditionModel.from_pretrained(model, subfolder="unet")      # noqa: E731
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for m, shape in list(lora_targets(fresh()).items())[::7]:     # a spread of Linear and Conv2d layers, rank 2, alpha 3
        tensors[f"{m}.lora_down.weight"] = torch.randn(2, *shape[1:], generator=g) * 0.1
        tensors[f"{m}.lora_up.weight"] = torch.randn(shape[0], 2, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.1
        tensors[f"{m}.alpha"] = torch.tensor(3.0)
    path = write_valid_lora(str(tmp_path / "l.safetensors"), tensors, {"rayflow.architecture": "sd15"})
    ours = load_unet_lora(fresh(), path).eval()
    theirs = fresh()
    state, alphas = StableDiffusionPipeline.lora_state_dict(path)
    theirs.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="rayflow")
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([900, 10])
    c = torch.randn(2, 77, ours.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        a, b = ours(x, t, encoder_hidden_states=c).sample, theirs.eval()(x, t, encoder_hidden_states=c).sample
        plain = fresh().eval()(x, t, encoder_hidden_states=c).sample
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, plain, atol=1e-4)         # the LoRA changed the UNet


def test_the_demo_reader_is_the_validating_one(tmp_path):
    from proxy.recipe import TEACHER
    from proxy.sampling import load_lora_unet

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(LoraFileError, match="bad.safetensors is corrupt"):
        load_lora_unet(TEACHER, str(bad))
    with pytest.raises(LoraFileError, match="the LoRA was made for another model variant"):
        load_lora_unet(TEACHER, write_valid_lora(str(tmp_path / "other.safetensors")))      # tiny_lora's layers
    from training.lora_targets import config_targets

    shape = config_targets(TEACHER)[1]["lora_unet_conv_out"]          # a LoRA that fits the teacher, but NaN
    nan = {"lora_unet_conv_out.lora_down.weight": torch.full((2, *shape[1:]), float("nan")),
           "lora_unet_conv_out.lora_up.weight": torch.ones(shape[0], 2, 1, 1), "lora_unet_conv_out.alpha": torch.tensor(2.0)}
    with pytest.raises(LoraFileError, match="holds NaN or infinite values"):
        load_lora_unet(TEACHER, write_valid_lora(str(tmp_path / "nan.safetensors"), nan, {"rayflow.architecture": "sd15"}))
