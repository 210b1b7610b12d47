"""Node logic that needs no ComfyUI: the V3 entry point, the node declarations (tooltips, ranges),
LoRA metadata and name checks, schedules, sampler glue."""

import ast
import inspect
import math
import os

import pytest
import torch
from safetensors.torch import save_file

from extension import load_extension

ext = load_extension()
from rayflow_comfy_ext import nodes  # noqa: E402  (loaded as ComfyUI does)
from rayflow_comfy_ext.nodes import lora_loader, lora_meta, sampling, schedule  # noqa: E402

import rayflow  # noqa: E402


NODE_IDS = ["RayFlowSampler", "RayFlowSamplerSelect", "RayFlowScheduler", "RayFlowTargetMean", "RayFlowLoraLoader"]
V3_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nodes", "v3.py")


def test_comfyui_finds_the_nodes_through_the_v3_entrypoint_only():
    """ComfyUI's ``load_custom_node`` takes a pack's ``NODE_CLASS_MAPPINGS`` when it has one and then
    ignores ``comfy_entrypoint``; ours must offer only the entry point (a coroutine function, as there)."""
    assert inspect.iscoroutinefunction(ext.comfy_entrypoint)
    assert not hasattr(ext, "NODE_CLASS_MAPPINGS") and not hasattr(ext, "NODE_DISPLAY_NAME_MAPPINGS")


def test_declarations_ids_categories_tooltips_and_ranges():
    assert list(nodes.NODES) == NODE_IDS
    assert {n.display_name for n in nodes.NODES.values()} == {
        "RayFlow Sampler", "RayFlow Sampler (SAMPLER)", "RayFlow Scheduler (SIGMAS)", "Ray Target Mean",
        "RayFlow LoRA Loader"}
    for node_id, node in nodes.NODES.items():
        assert node.node_id == node_id and node.category == "sampling/rayflow" and node.description
        for i in node.inputs:
            assert i.tooltip, f"{node_id}.{i.name} has no tooltip"
            if i.type in ("INT", "FLOAT"):
                assert i.min <= i.default <= i.max, f"{node_id}.{i.name}: default outside its range"
            else:
                assert not i.widget_options(), f"{node_id}.{i.name}: widget options on a {i.type} input"
            assert (i.type == "COMBO") == (i.choices is not None)
        assert node.outputs and all(o.tooltip for o in node.outputs)
        assert len({i.name for i in node.inputs}) == len(node.inputs)
        optional = [i.optional for i in node.inputs]
        assert optional == sorted(optional), f"{node_id}: an optional input before a required one"
    assert "model evaluations" in _input("RayFlowTargetMean", "probe_steps").tooltip
    assert (_input("RayFlowSampler", "steps").min, _input("RayFlowSampler", "steps").max) == (1, 50)
    assert nodes.NODES["RayFlowTargetMean"].return_types == ("RAY_TARGET", "LATENT", "LATENT")
    assert [o.name for o in nodes.NODES["RayFlowTargetMean"].outputs] == ["ray_target", "target_mean", "probe_sample"]


def _input(node_id, name):
    return next(i for i in nodes.NODES[node_id].inputs if i.name == name)


def test_classic_input_types_view(monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_filename_list", lambda kind: ["a.safetensors", "b.ckpt", "c.safetensors"])
    spec = nodes.NODES["RayFlowSampler"].input_types()
    assert list(spec["required"]) == ["model", "seed", "steps", "cfg", "positive", "negative", "latent_image",
                                      "denoise", "sigma", "eta"]
    assert list(spec["optional"]) == ["ray_target"]
    assert spec["required"]["seed"][1]["control_after_generate"] is True
    assert spec["required"]["cfg"][1]["round"] == 0.01
    assert nodes.NODES["RayFlowSamplerSelect"].input_types()["optional"]["ray_target"][0] == "RAY_TARGET"
    lora = nodes.NODES["RayFlowLoraLoader"].input_types()["required"]
    assert lora["lora_name"][0] == ["a.safetensors", "c.safetensors"]         # read when asked, .safetensors only
    assert lora["min_coverage"][1] == {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": _input("RayFlowLoraLoader", "min_coverage").tooltip}


def test_lora_name_outside_the_offered_files_is_refused_at_validation(monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_filename_list", lambda kind: ["a.safetensors", "b.ckpt"])
    assert lora_loader.lora_name_error("a.safetensors") is None
    assert lora_loader.lora_name_error(None) is None                    # a link: checked when it runs
    assert lora_loader.lora_name_error("b.ckpt") == "Value not in list: lora_name: 'b.ckpt' not in ['a.safetensors']"
    monkeypatch.setattr(folder_paths, "get_filename_list", lambda kind: [f"{i}.safetensors" for i in range(21)])
    assert lora_loader.lora_name_error("x.safetensors").endswith("not in (list of length 21)")


def _v3_classes():
    """``{node_id: (class name, execute's parameters)}`` from nodes/v3.py's source (it imports
    ComfyUI's comfy_api, which this venv lacks; tests/comfyui runs it)."""
    tree = ast.parse(open(V3_MODULE).read())
    out = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
        if "define_schema" not in methods:
            continue
        call = next(n for n in ast.walk(methods["define_schema"]) if isinstance(n, ast.Call)
                    and getattr(n.func, "id", None) == "v3_schema")
        args = methods["execute"].args
        out[call.args[0].value] = (cls.name, [a.arg for a in args.args[1:]], len(args.defaults))
    listed = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "NODE_LIST")
    return out, [e.id for e in listed.value.elts]


def test_v3_nodes_execute_takes_the_declared_inputs_in_order():
    classes, listed = _v3_classes()
    assert list(classes) == NODE_IDS and listed == [classes[n][0] for n in NODE_IDS]
    for node_id, (name, params, n_defaults) in classes.items():
        node = nodes.NODES[node_id]
        assert name == node_id
        assert params == [i.name for i in node.inputs], f"{node_id}.execute parameters differ from its inputs"
        assert n_defaults >= sum(i.optional for i in node.inputs), f"{node_id}: an optional input without default"


def _lora(path, meta=None, keys=("lora_unet_x.lora_down.weight",)):
    save_file({k: torch.zeros(2, 2) for k in keys}, str(path), metadata=meta)
    return str(path)


def _raw(path, data):
    path.write_bytes(data)
    return str(path)


GOOD = {"rayflow.format": "1", "rayflow.architecture": "sd15", "rayflow.sigma": "0.3", "rayflow.path": "sigma",
        "rayflow.recommended_steps": "4", "rayflow.recommended_cfg": "1.0"}


def test_metadata_round_trip_and_sampler_settings(tmp_path):
    meta = lora_meta.read_rayflow_metadata(_lora(tmp_path / "a.safetensors", GOOD))
    assert meta["architecture"] == "sd15"
    assert lora_meta.sampler_settings(meta) == {"sigma": 0.3, "path": "sigma", "steps": 4, "cfg": 1.0, "eta": 0.0,
                                                "architecture": "sd15", "guidance": None}   # no recommended_eta: 0
    meta = lora_meta.read_rayflow_metadata(_lora(tmp_path / "e.safetensors", {**GOOD, "rayflow.recommended_eta": "1.0"}))
    assert lora_meta.sampler_settings(meta)["eta"] == 1.0
    with pytest.raises(lora_meta.LoraFileError, match="recommended_eta"):
        lora_meta.read_rayflow_metadata(_lora(tmp_path / "b.safetensors", {**GOOD, "rayflow.recommended_eta": "2"}))
    flux = {**GOOD, "rayflow.architecture": "flux_dev", "rayflow.recommended_guidance": "3.5", "rayflow.shift": "3.16"}
    del flux["rayflow.path"]                  # a flow family's path defaults to "flow"
    meta = lora_meta.read_rayflow_metadata(_lora(tmp_path / "f.safetensors", flux))
    assert lora_meta.sampler_settings(meta) == {"sigma": 0.3, "path": "flow", "steps": 4, "cfg": 1.0, "eta": 0.0,
                                                "architecture": "flux_dev", "guidance": 3.5}


@pytest.mark.parametrize("arch, path", [("sd3", "sigma"), ("flux_schnell", "linear"), ("sdxl", "flow")])
def test_a_path_that_does_not_fit_the_family_is_malformed_metadata(tmp_path, arch, path):
    meta = {**GOOD, "rayflow.architecture": arch, "rayflow.path": path}
    with pytest.raises(lora_meta.LoraFileError, match=f"rayflow.path = '{path}' does not fit"):
        lora_meta.read_rayflow_metadata(_lora(tmp_path / "x.safetensors", meta))


@pytest.mark.parametrize("make, message", [
    (lambda p: _lora(p, {"ss_network_dim": "8"}), "is not a RayFlow LoRA (no RayFlow metadata); load it with the stock LoraLoader"),
    (lambda p: _lora(p, GOOD, keys=("model.diffusion_model.w",)), "is not a LoRA (no LoRA weights inside)"),
    (lambda p: _raw(p, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}12345678"), "is corrupt or not a safetensors file"),
    (lambda p: _raw(p, b"abc"), "is corrupt or not a safetensors file"),
    (lambda p: _lora(p, {**GOOD, "rayflow.architecture": "flux2"}), "names an unknown architecture 'flux2'"),
    (lambda p: _lora(p, {**GOOD, "rayflow.sigma": "abc"}), "malformed RayFlow metadata"),
    (lambda p: str(p.parent / "missing.safetensors"), "LoRA file not found"),
    (lambda p: _lora(p, {k: v for k, v in GOOD.items() if k != "rayflow.architecture"}),
     "has no rayflow.architecture, so the model family it was made for is unknown"),
    (lambda p: (p.parent / "loras").mkdir() or str(p.parent / "loras"), "loras is a folder, not a LoRA file"),
])
def test_bad_lora_files_get_one_clear_sentence(tmp_path, make, message):
    path = make(tmp_path / "x.safetensors")
    with pytest.raises(lora_meta.LoraFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lora_meta.read_rayflow_metadata(path)


def test_pickle_files_are_refused_without_reading(tmp_path):
    p = tmp_path / "x.ckpt"
    p.write_bytes(b"\x80\x04not really")
    with pytest.raises(lora_meta.LoraFileError, match="loads LoRAs only from safetensors"):
        lora_meta.read_rayflow_metadata(str(p))


def test_architecture_mismatch_names_both_sides():
    lora_meta.check_architecture("ray.safetensors", "sd15", "SD15")
    with pytest.raises(lora_meta.LoraFileError) as err:
        lora_meta.check_architecture("ray.safetensors", "sd15", "SDXL")
    assert "ray.safetensors is a RayFlow LoRA for SD1.5, but the loaded model is SDXL" in str(err.value)
    with pytest.raises(lora_meta.LoraFileError, match="for PixArt-alpha, but the loaded model is SD1.5"):
        lora_meta.check_architecture("p.safetensors", "pixart_alpha", "SD15")


@pytest.mark.parametrize("lora_arch, comfy_class, message", [
    # flow families: each ComfyUI class is its own family; VP <-> flow also names each side's kind
    ("sd3", "Flux", "s.safetensors is a RayFlow LoRA for SD3 / SD3.5, but the loaded model is FLUX.1-dev; "
                    "load a SD3 / SD3.5 model"),
    ("flux_dev", "FluxSchnell", "for FLUX.1-dev, but the loaded model is FLUX.1-schnell;"),
    ("sd15", "Flux", "for SD1.5 (an epsilon-prediction (VP) model), but the loaded model is FLUX.1-dev "
                     "(a flow-matching model)"),
    ("sd3", "SDXL", "for SD3 / SD3.5 (a flow-matching model), but the loaded model is SDXL "
                    "(an epsilon-prediction (VP) model)"),
    ("flux_dev", "QwenImage", "for FLUX.1-dev, but the loaded model is QwenImage;"),
])
def test_a_flow_lora_on_another_family_is_one_sentence(lora_arch, comfy_class, message):
    for arch, cls in (("sd3", "SD3"), ("flux_dev", "Flux"), ("flux_schnell", "FluxSchnell")):
        lora_meta.check_architecture("s.safetensors", arch, cls)
    with pytest.raises(lora_meta.LoraFileError) as err:
        lora_meta.check_architecture("s.safetensors", lora_arch, comfy_class)
    assert message in str(err.value) and str(err.value).count(";") == 1


def test_ray_sigmas_follow_the_model_table_and_denoise():
    sd = rayflow.NoiseSchedule.scaled_linear()
    table = sd.sigmas.float()
    torch.testing.assert_close(schedule.ray_sigmas_for(table, 4), sd.ray_sigmas(4), rtol=1e-5, atol=1e-6)
    half = schedule.ray_sigmas_for(table, 4, denoise=0.5)
    torch.testing.assert_close(half, sd.ray_sigmas(8)[-5:], rtol=1e-5, atol=1e-6)
    assert schedule.ray_sigmas_for(table, 4, denoise=0.0).numel() == 0
    pix = rayflow.NoiseSchedule.linear()
    assert float(schedule.ray_sigmas_for(pix.sigmas.float(), 1)[0]) == pytest.approx(float(pix.sigmas[-1]), rel=1e-5)
    with pytest.raises(ValueError, match="denoise must be in"):
        schedule.ray_sigmas_for(table, 4, denoise=1.5)


def test_flow_ray_sigmas_follow_the_model_table_and_denoise():
    """A CONST model's table (SD3: shift 3 on 1000 levels, as ComfyUI keeps it in float32; FLUX:
    10000 levels) gives the trailing levels of eq. 10.9, starting at t = 1."""
    sd3 = rayflow.FlowSchedule.shifted(3.0)
    table = sd3.sigmas.float()
    flow = rayflow.FLOW
    torch.testing.assert_close(schedule.ray_sigmas_for(table, 4, interpolation=flow), sd3.ray_sigmas(4),
                               rtol=1e-6, atol=1e-7)
    assert float(schedule.ray_sigmas_for(table, 1, interpolation=flow)[0]) == 1.0
    torch.testing.assert_close(schedule.ray_sigmas_for(table, 4, denoise=0.5, interpolation=flow),
                               sd3.ray_sigmas(8)[-5:], rtol=1e-6, atol=1e-7)
    flux = rayflow.FlowSchedule.shifted(math.exp(1.15), num_timesteps=10000)
    expected = torch.cat([rayflow.time_shift(torch.tensor([1.0, 0.75, 0.5, 0.25]), math.exp(1.15)), torch.zeros(1)])
    torch.testing.assert_close(schedule.ray_sigmas_for(flux.sigmas.float(), 4, interpolation=flow),
                               expected.float(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="must end at noise level 1"):       # an eps table is not a flow table
        schedule.ray_sigmas_for(table[:-1], 4, interpolation=flow)


def test_eta_default_follows_the_lora():
    assert sampling.resolve_eta(None, -1.0) == 0.0 and sampling.resolve_eta({}, -1.0) == 0.0    # no RayFlow LoRA
    ray, fidelity = {"rayflow": {"eta": 1.0}}, {"rayflow": {"eta": 0.0}}
    assert sampling.resolve_eta(ray, -1.0) == 1.0 and sampling.resolve_eta(fidelity, -1.0) == 0.0
    assert sampling.resolve_eta(ray, 0.0) == 0.0 and sampling.resolve_eta(fidelity, 0.5) == 0.5   # given: kept


def test_process_defaults_follow_the_lora_settings():
    def fields(p):
        return (p.sigma, p.path)

    assert fields(sampling.resolve_process({}, 0.0)) == (0.3, "sigma")
    assert fields(sampling.resolve_process(None, 0.0)) == (0.3, "sigma")
    opts = {"rayflow": {"sigma": 0.1, "path": "linear"}}
    assert fields(sampling.resolve_process(opts, 0.0)) == (0.1, "linear")
    assert fields(sampling.resolve_process(opts, 0.5)) == (0.5, "linear")
    # flow models: the flow path is the Ray sigma path on the flow interpolation (eq. 10.2)
    assert fields(sampling.resolve_process({}, 0.0, rayflow.FLOW)) == (0.3, "sigma")
    flow = {"rayflow": {"sigma": 0.2, "path": "flow"}}
    assert fields(sampling.resolve_process(flow, 0.0, rayflow.FLOW)) == (0.2, "sigma")
    with pytest.raises(ValueError, match="trained on the flow path, but the model samples as an epsilon-prediction"):
        sampling.resolve_process(flow, 0.0)
    with pytest.raises(ValueError, match="trained on the linear path, but the model samples as a flow-matching"):
        sampling.resolve_process(opts, 0.0, rayflow.FLOW)


def _toy():
    sd = rayflow.NoiseSchedule.scaled_linear()
    sig = sd.ray_sigmas(3)
    den = rayflow.denoiser_from_eps(lambda x, t: torch.tanh(x), sd)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sig[0])
    return den, x, sig


def test_ksampler_function_is_the_kernel_and_checks_the_target():
    den, x, sig = _toy()
    mu = torch.randn(2, 4, 8, 8)
    proc = rayflow.RayProcess(0.3)
    target = {"eps_mu": mu, "seed": 3}
    a = sampling._ray_sample(den, x, sig, process=proc, ray_target=target, eta=0.5, extra_args={"seed": 3}, disable=True)
    b = rayflow.sample_ray_sigma(den, x, sig, process=proc, eps_mu=mu, eta=0.5, extra_args={"seed": 3}, disable=True)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="ray_target was computed for latents of shape"):
        sampling._ray_sample(den, x, sig, process=proc, ray_target={"eps_mu": mu[:1]}, disable=True)
    with pytest.raises(ValueError, match="probed from the noise of seed 5, but this sampler uses seed 6"):
        sampling._ray_sample(den, x, sig, process=proc, ray_target={"eps_mu": mu, "seed": 5}, extra_args={"seed": 6})
    with pytest.raises(ValueError, match="must come from a Ray Target Mean node"):
        sampling._target_tensor(mu, 6)


def test_sampler_function_takes_the_lora_settings_from_the_run_s_model_options():
    """The SAMPLER node knows no model: sigma 0 and the path come from the guider's model_options."""
    den, x, sig = _toy()
    opts = {"rayflow": {"sigma": 0.1, "path": "linear"}}
    a = sampling._ray_sample(den, x, sig, sigma=0.0, eta=1.0, extra_args={"seed": 3, "model_options": opts}, disable=True)
    b = rayflow.sample_ray_sigma(den, x, sig, process=rayflow.RayProcess(0.1, path="linear"), eta=1.0,
                                 extra_args={"seed": 3}, disable=True)
    torch.testing.assert_close(a, b)
    c = sampling._ray_sample(den, x, sig, sigma=0.0, eta=1.0, extra_args={"seed": 3}, disable=True)
    assert not torch.allclose(a, c)          # without the LoRA settings: sigma 0.3, sigma path


def test_lora_module_names_counts_layers_in_both_key_forms():
    from rayflow.lora_file import lora_module_names, module_count

    keys = ["lora_unet_a.lora_down.weight", "lora_unet_a.lora_up.weight", "lora_unet_a.alpha",
            "transformer.b.lora_A.weight", "transformer.b.lora_B.weight"]
    assert lora_module_names(keys) == {"lora_unet_a", "transformer.b"}
    assert module_count(keys) == 2
