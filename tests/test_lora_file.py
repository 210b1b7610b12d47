"""The LoRA-file validator (``rayflow.lora_file``) case by case, the exporter's files through it, and
the loader node refusing bad files before ComfyUI's LoRA code sees them (``comfy`` stubbed)."""

import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from rayflow.lora_file import LoraFileError, validate_lora
from tiny_lora import LAYERS, METADATA, lora_tensors, write_valid_lora

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _write(tmp_path, tensors=None, meta=None, name="x.safetensors"):
    return write_valid_lora(str(tmp_path / name), tensors, meta)


def _with(**changes):
    t = lora_tensors()
    for k, v in changes.items():
        if v is None:
            t.pop(k)
        else:
            t[k] = v
    return t


def test_a_valid_file_is_described(tmp_path):
    lora = validate_lora(_write(tmp_path), LAYERS)
    assert (lora.rank, lora.declared, lora.fitting, lora.coverage, lora.form) == (2, 5, 5, 1.0, "kohya")
    assert lora.meta["lora_modules"] == "5" and lora.meta["sigma"] == "0.3"
    text = lora.summary()
    assert "for SD1.5" in text and "rank 2" in text and "recipe ray" in text and "patches 5 of the model's 5" in text


@pytest.mark.parametrize("tensors, meta, message", [
    (_with(**{f"{Q}.lora_down.weight": None}), None, f"module '{Q}' lacks its '{Q}.lora_down.weight' tensor"),
    (_with(**{f"{Q}.alpha": None}), None, "lacks its"),
    (_with(**{f"{Q}.alpha": torch.ones(3)}), None, "alpha must be one number"),
    (_with(**{f"{Q}.alpha": torch.tensor(0.0)}), None, "alpha must be positive"),
    (_with(**{f"{Q}.lora_down.weight": torch.zeros(0, 6)}), None, "a LoRA module needs non-empty"),
    (_with(**{f"{Q}.lora_down.weight": torch.tensor(1.0)}), None, "a LoRA module needs non-empty"),
    (_with(**{f"{Q}.lora_up.weight": torch.randn(8, 3)}), None, "which does not fit"),
    (_with(**{f"{Q}.lora_down.weight": torch.full((2, 6), float("nan"))}), None, "holds NaN or infinite values"),
    (_with(**{f"{Q}.lora_up.weight": torch.full((8, 2), 1e38)}), None, "magnitude 1e+38"),
    (_with(**{f"{Q}.lora_down.weight": torch.ones(2, 6, dtype=torch.int32)}), None, "is stored as I32"),
    (_with(**{f"{Q}.lora_down.weight": torch.ones(2, 6).to(torch.float8_e4m3fn)}), None, "is stored as F8_E4M3"),
    (_with(**{"lora_unet_extra.weight": torch.ones(2)}), None, "is not part of a kohya-form LoRA module"),
    ({k: torch.zeros_like(v) if not k.endswith(".alpha") else v for k, v in lora_tensors().items()}, None, "is all zeros"),
    (None, {**METADATA, "rayflow.recommended_cfg": "nan"}, "rayflow.recommended_cfg = 'nan' must be a number in [0, 100]"),
    (None, {**METADATA, "rayflow.format": "99"}, "has RayFlow format '99', which this version does not know"),
    (None, {**METADATA, "rayflow.schedule": "cosine"}, "rayflow.schedule = 'cosine' must be one of"),
    (None, {**METADATA, "rayflow.target_mean": "probe:0"}, "rayflow.target_mean"),
    (None, {**METADATA, "rayflow.num_train_timesteps": "abc"}, "rayflow.num_train_timesteps = 'abc' is not a number"),
    (None, {**METADATA, "rayflow.recipe": "magic"}, "rayflow.recipe"),
    (None, {**METADATA, "rayflow.preset": "x" * 5_000_000}, "is 5000000 characters long"),
    (None, {**METADATA, "rayflow.lora_rank": "8"}, "rank [2], but rayflow.lora_rank says 8"),
])
def test_each_defect_is_one_sentence_naming_file_and_key(tmp_path, tensors, meta, message):
    path = _write(tmp_path, tensors, meta)
    with pytest.raises(LoraFileError) as err:
        validate_lora(path, LAYERS)
    assert message in str(err.value) and str(err.value).startswith("x.safetensors") and "\n" not in str(err.value)


def test_float64_weights_are_accepted_as_comfyui_applies_them(tmp_path):
    """ComfyUI casts every LoRA weight to float32 before patching (comfy/weight_adapter/lora.py), so a
    float64 file changes the model like a float32 one; integers are refused for what they are."""
    path = _write(tmp_path, {k: v.double() for k, v in lora_tensors().items()})
    lora = validate_lora(path, LAYERS)
    assert lora.dtypes == ("F64",) and lora.fitting == 5
    path = _write(tmp_path, _with(**{f"{Q}.lora_down.weight": torch.ones(2, 6, dtype=torch.int32)}))
    with pytest.raises(LoraFileError, match="is stored as I32, but LoRA weights are floating point") as err:
        validate_lora(path, LAYERS)
    assert "patch nothing" not in str(err.value)


def test_a_module_training_left_at_zero_still_fits(tmp_path):
    """A trained LoRA can hold a module whose up weight is still exactly zero (a layer the loss never
    reached, or values below fp16's range): it fits its layer and patches nothing, the file is whole."""
    path = _write(tmp_path, _with(**{f"{Q}.lora_up.weight": torch.zeros(8, 2)}))
    lora = validate_lora(path, LAYERS)
    assert lora.fitting == 5 and lora.coverage == pytest.approx(1.0)


def test_partial_files_are_refused_unless_min_coverage_is_lowered(tmp_path):
    t = {k: v for k, v in lora_tensors().items() if "conv_out" not in k}
    path = _write(tmp_path, t, {**METADATA, "rayflow.lora_modules": "5"})      # declared 5, holds 4
    with pytest.raises(LoraFileError, match="holds only 4 of its 5 layers .*lower min_coverage"):
        validate_lora(path)
    assert validate_lora(path, LAYERS, min_coverage=0.8).coverage == pytest.approx(0.8)
    smaller = dict(LAYERS, **{Q: [9, 6]})                  # the model's layer differs: a shape error, not coverage
    with pytest.raises(LoraFileError, match=f"module '{Q}' makes a \\[8, 6\\] change, but the model's layer is \\[9, 6\\]"):
        validate_lora(path, smaller, min_coverage=0.5)
    lacking = {k: v for k, v in LAYERS.items() if k != Q}
    with pytest.raises(LoraFileError, match="fits only 3 of its 5 layers to this model"):
        validate_lora(path, lacking)
    with pytest.raises(LoraFileError, match="has no module that fits this model's layers"):
        validate_lora(path, {"lora_unet_other": [4, 4]}, min_coverage=0.0)


def test_pickles_and_array_metadata_are_refused(tmp_path):
    p = tmp_path / "p.safetensors"
    torch.save(lora_tensors(), str(p))
    with pytest.raises(LoraFileError, match="is corrupt or not a safetensors file"):
        validate_lora(str(p))
    import json
    import struct
    raw = json.dumps({"__metadata__": {"rayflow.format": "1", "rayflow.architecture": ["sd15"]},
                      "lora_unet_a.lora_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    with pytest.raises(LoraFileError, match="rayflow.architecture is a JSON list, not a string"):
        validate_lora(str(p))


def test_the_exporter_s_file_of_a_tiny_unet_validates_fully(tmp_path):
    from training.export import export_state_dict, write_lora
    from training.tiny import build_tiny_sd15

    from lora_models import ALPHA, RANK, random_lora_model

    model, peft_sd = random_lora_model(build_tiny_sd15(str(tmp_path / "m"), with_vae=False), "sd15", seed=0)
    path = str(tmp_path / "l.safetensors")
    write_lora(path, export_state_dict("sd15", peft_sd, RANK, ALPHA, "fp16"),
               {**METADATA, "rayflow.lora_rank": RANK, "rayflow.lora_alpha": float(ALPHA)})
    targets = {"lora_unet_" + n.replace(".base_layer", "").replace(".", "_"): list(m.weight.shape)
               for n, m in model.unet.named_modules() if n.endswith("base_layer")}
    lora = validate_lora(path, targets)
    assert lora.fitting == lora.declared == len(targets) and lora.dtypes == ("F16",)


class _Model:
    """The bits of a ComfyUI ModelPatcher the loader uses."""
    def __init__(self, weights):
        self.model = types.SimpleNamespace(state_dict=lambda: weights, model_config=type("SD15", (), {})())
        self.patches, self.model_options = {}, {}

    def clone(self):
        out = _Model(self.model.state_dict())
        out.patches, out.model_options = dict(self.patches), dict(self.model_options)
        return out

    def add_patches(self, patches, strength):
        self.patches.update(patches)


@pytest.fixture
def loader(monkeypatch, tmp_path):
    """The loader node with ``folder_paths`` reading ``tmp_path`` and ``comfy.lora`` stubbed (a key map
    of LAYERS; ``load_lora`` records what it was given, as ComfyUI's would patch it)."""
    from extension import load_extension

    ext = load_extension()
    calls = []
    lora_mod = types.ModuleType("comfy.lora")
    lora_mod.model_lora_keys_unet = lambda model, km: {m: "diffusion_model." + m + ".weight" for m in LAYERS}
    lora_mod.load_lora = lambda sd, key_map: calls.append(sd) or {key_map[m]: ("lora", m) for m in LAYERS
                                                                  if f"{m}.lora_down.weight" in sd}
    convert = types.ModuleType("comfy.lora_convert")
    convert.convert_lora = lambda sd: sd
    comfy = types.ModuleType("comfy")
    comfy.lora, comfy.lora_convert = lora_mod, convert
    for name, mod in (("comfy", comfy), ("comfy.lora", lora_mod), ("comfy.lora_convert", convert)):
        monkeypatch.setitem(sys.modules, name, mod)
    import folder_paths
    monkeypatch.setattr(folder_paths, "get_full_path", lambda kind, name: str(tmp_path / name), raising=False)
    model = _Model({"diffusion_model." + m + ".weight": torch.zeros(s) for m, s in LAYERS.items()})
    return ext.nodes.lora_loader, model, calls


def test_loader_applies_a_valid_file_and_refuses_bad_ones_before_comfy(loader, tmp_path):
    from rayflow_comfy_ext.nodes.lora_meta import LoraFileError    # the class as ComfyUI loads it
    node, model, calls = loader
    _write(tmp_path, name="good.safetensors")
    out = node.load_lora(model, "good.safetensors", 1.0)
    assert len(out.patches) == 5 and out.model_options["rayflow"]["steps"] == 4 and not model.patches
    _write(tmp_path, _with(**{f"{Q}.lora_down.weight": None}), name="bad.safetensors")
    _write(tmp_path, {k: v for k, v in lora_tensors().items() if "conv_out" not in k},
           {**METADATA, "rayflow.lora_modules": "5"}, name="partial.safetensors")
    with pytest.raises(LoraFileError, match="lacks its"):
        node.load_lora(model, "bad.safetensors", 1.0)
    with pytest.raises(LoraFileError, match="fits only 4 of its 5 layers to this model"):
        node.load_lora(model, "partial.safetensors", 1.0)
    assert len(calls) == 1                                 # comfy.lora saw only the good file
    part = node.load_lora(model, "partial.safetensors", 1.0, min_coverage=0.8)
    assert len(part.patches) == 4
    from extension import load_extension

    spec = load_extension().nodes.NODES["RayFlowLoraLoader"].input_types()["required"]["min_coverage"][1]
    assert (spec["default"], spec["min"], spec["max"]) == (1.0, 0.0, 1.0)
