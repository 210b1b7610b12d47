"""End-to-end tests of ``python -m training.distill`` on a tiny random-weight SD1.5-family model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from training.config import DistillConfig, build_parser
from training.distill import main
from training.tiny import build_tiny_sd15

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--resolution", "16", "--teacher-steps", "3", "--batch-size", "4", "--lora-rank", "4", "--lora-alpha", "4",
        "--shard-size", "2", "--log-every", "5"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = build_tiny_sd15(str(root / "model"))
    prompts = root / "prompts.txt"
    prompts.write_text("a red cat\na blue house\n\na small green tree\n", encoding="utf-8")
    return model, str(prompts)


def run_cli(*args):
    return main([str(a) for a in args])


def test_end_to_end_sd15_produces_a_lora_that_diffusers_loads(tiny, tmp_path):
    model, prompts = tiny
    out = tmp_path / "out" / "ray.safetensors"
    assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 12, *FAST) == 0
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["rayflow.format"] == "1" and meta["rayflow.architecture"] == "sd15"
    # --sigma auto (the default): the mean Theorem-1 spread of the trajectories phase 1 built, to 4 decimals
    from training.data import load_cache

    sigma_star = load_cache(str(tmp_path / "out" / "ray.work" / "cache")).sigma_star
    assert meta["rayflow.sigma"] == str(round(float(sigma_star.double().mean()), 4)) != "0.3"
    assert meta["rayflow.path"] == "sigma" and meta["rayflow.recipe"] == "ray" and meta["rayflow.preset"] == "few-step"
    assert meta["rayflow.start_anchor"] == "0.5" and meta["rayflow.recommended_eta"] == "1.0"   # the default preset
    assert meta["rayflow.schedule"] == "scaled_linear" and meta["rayflow.time_sampler"] == "on"
    assert meta["rayflow.train_steps"] == "12" and meta["rayflow.teacher_solver"] == "dpmsolver++"
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith(".lora_down.weight") for k in keys) and any(k.endswith(".alpha") for k in keys)
    work = tmp_path / "out" / "ray.work"
    # the validation grid: teacher row first, RayFlow 1/2/4 steps, a column per cached item, captions below
    from PIL import Image

    from training.grid import LABEL_W

    items = len(load_cache(str(work / "cache")).prompts)
    grid, tile = Image.open(work / "validation_final.png"), 16 * (96 // 16)
    assert grid.size[0] == LABEL_W + min(4, items) * tile and grid.size[1] > 4 * tile
    assert grid.crop((LABEL_W, 4 * tile, grid.size[0], grid.size[1])).convert("L").getextrema()[0] < 128
    rows = (work / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 1 + 12 // 5 + 1
    # diffusers loads the kohya-form file and it changes the UNet's output
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 16, 32)
    with torch.no_grad():
        before = pipe.unet(x, 500, encoder_hidden_states=ctx).sample
        pipe.load_lora_weights(str(out))
        after = pipe.unet(x, 500, encoder_hidden_states=ctx).sample
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("flags, recipe, ts, weighting", [(["--no-ray"], "rectified", "on", "truncated-snr"),
                                                          (["--preset", "fidelity"], "rectified", "on", "truncated-snr"),
                                                          (["--no-time-sampler"], "ray", "off", "truncated-snr"),
                                                          (["--loss-weighting", "eps"], "ray", "on", "eps")])
def test_ablation_flags(tiny, tmp_path, flags, recipe, ts, weighting):
    model, prompts = tiny
    out = tmp_path / "a.safetensors"
    assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 4, *FAST, *flags) == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["rayflow.recipe"] == recipe and meta["rayflow.time_sampler"] == ts
    assert meta["rayflow.loss_weighting"] == weighting
    assert meta["rayflow.preset"] == (flags[1] if flags[0] == "--preset" else "few-step")
    assert meta["rayflow.recommended_eta"] == ("0.0" if recipe == "rectified" else "1.0")


def test_start_anchor_changes_training_and_is_recorded(tiny, tmp_path):
    from safetensors.torch import load_file

    model, prompts = tiny
    outs = {}
    for anchor in ("0", "1"):
        outs[anchor] = tmp_path / f"anchor{anchor}.safetensors"
        assert run_cli("--model", model, "--prompts", prompts, "--output", outs[anchor], "--train-steps", 4, *FAST,
                       "--start-anchor", anchor) == 0
    with safe_open(str(outs["1"]), "pt") as f:
        assert f.metadata()["rayflow.start_anchor"] == "1.0"
    plain, anchored = load_file(str(outs["0"])), load_file(str(outs["1"]))
    assert plain.keys() == anchored.keys()
    assert any(not torch.equal(plain[k], anchored[k]) for k in plain)


def _training_inputs(monkeypatch, tiny, out, *flags):
    """Run 3 training steps and return ``(x_t, t)`` of every denoiser call of phase 2, and the cache."""
    from training.data import load_cache
    from training.trainer import Trainer

    seen = []
    predict = Trainer.predict

    def spy(self, net, x, t, cond):
        seen.append((x.detach().cpu().clone(), t.detach().cpu().clone()))
        return predict(self, net, x, t, cond)

    monkeypatch.setattr(Trainer, "predict", spy)
    model, prompts = tiny
    assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 3, *FAST, *flags) == 0
    x_t, t = (torch.cat(v) for v in zip(*seen[:3]))     # the 3 training steps (validation grids come later)
    return x_t, t, load_cache(str(out)[: -len(".safetensors")] + ".work/cache")


def test_top_share_trains_the_one_step_timestep_and_the_taper_feeds_the_exact_start(monkeypatch, tiny, tmp_path):
    T = 1000
    x_t, t, cache = _training_inputs(monkeypatch, tiny, tmp_path / "top.safetensors", "--start-anchor", "1",
                                     "--anchor-taper", "--top-share", "0.5")
    top = t == T - 1
    assert int(top.sum()) >= 3 * 2 and bool(top.view(3, 4)[:, :2].all())     # half of every batch of 4
    # eq. 7.4: at T - 1 with anchor weight 1 and the noise tapered away, x_t is a seeded start z itself
    dist = torch.cdist(x_t[top].flatten(1), cache.noise.flatten(1)).min(1).values
    assert float(dist.max()) < 1e-4
    # without the taper the Ray noise is still there: sqrt(1 - a) sigma noise, sigma = 0.3
    x_t, t, cache = _training_inputs(monkeypatch, tiny, tmp_path / "plain.safetensors", "--start-anchor", "1",
                                     "--top-share", "0.5")
    dist = torch.cdist(x_t[t == T - 1].flatten(1), cache.noise.flatten(1)).min(1).values
    assert float(dist.min()) > 1.0


def test_taper_and_top_share_are_checked_and_recorded(tiny, tmp_path):
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="--anchor-taper .* give --start-anchor > 0"):
        DistillConfig(model="m", prompts="p.txt", output="o.safetensors", anchor_taper=True).validate()
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="--top-share must be in"):
            DistillConfig(model="m", prompts="p.txt", output="o.safetensors", top_share=bad).validate()
    model, prompts = tiny
    out = tmp_path / "rec.safetensors"
    assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 1, *FAST,
                   "--start-anchor", "0.5", "--anchor-taper", "--top-share", "0.25") == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["rayflow.anchor_taper"] == "True" and meta["rayflow.top_share"] == "0.25"


def test_one_step_preset_reaches_the_trainer_and_the_metadata_and_flags_win(tiny, tmp_path):
    import json

    model, prompts = tiny
    out = tmp_path / "one.safetensors"
    assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 2, *FAST,
                   "--preset", "one-step", "--sigma", "0.2") == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["rayflow.preset"] == "one-step" and meta["rayflow.sigma"] == "0.2"          # the explicit flag wins
    assert meta["rayflow.start_anchor"] == "0.5" and meta["rayflow.anchor_taper"] == "True"
    assert meta["rayflow.top_share"] == "0.75" and meta["rayflow.recommended_steps"] == "1"
    # the trainer used the preset: three of every batch of 4 at the top timestep (the last diagnostics bin)
    recs = [json.loads(line) for line in (tmp_path / "one.work" / "time_sampler.jsonl").read_text().splitlines()]
    hist = recs[-1]["t_hist"]
    assert recs[-1]["step"] == 2 and sum(hist) == 8 and hist[-1] >= 6


def test_preset_values_sit_under_file_and_flag_values(tmp_path):
    from training.config import PRESETS, ConfigError, parse_args

    base = ["--model", "m", "--prompts", "p.txt", "--output", "o.safetensors"]
    cfg = parse_args(base + ["--preset", "one-step"])
    assert (cfg.start_anchor, cfg.anchor_taper, cfg.top_share, cfg.recommended_steps) == (0.5, True, 0.75, 1)
    assert parse_args(base + ["--preset", "one-step", "--top-share", "0.5"]).top_share == 0.5
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "one-step"\nstart-anchor = 0.25\n')
    cfg = parse_args(base + ["--config", str(toml)])
    assert cfg.start_anchor == 0.25 and cfg.top_share == 0.75
    few = parse_args(base)          # the default: start anchoring over the upper half, nothing else
    assert few.preset == "few-step" and few.sigma == "auto" and few.top_share == 0.0 and PRESETS["few-step"] == {"start_anchor": 0.5}
    assert (few.start_anchor, few.anchor_taper) == (0.5, False)
    assert parse_args(base + ["--preset", "paper"]).start_anchor == 0.0      # the paper's process
    fid = parse_args(base + ["--preset", "fidelity"])
    assert fid.no_ray and fid.training_process().sigma == 1.0 and not few.no_ray and fid.start_anchor == 0.0
    plain = parse_args(base + ["--no-ray"])           # the default preset's anchoring does not apply to ReFlow pairs
    assert plain.no_ray and plain.start_anchor == 0.0 and plain.preset == "few-step"
    with pytest.raises(ConfigError, match="--start-anchor changes the Ray target mean"):    # given both: one line
        parse_args(base + ["--no-ray", "--start-anchor", "0.3"])
    with pytest.raises(ConfigError, match="--preset must be one of few-step, paper, one-step, fidelity"):
        parse_args(base + ["--preset", "fast"])
    with pytest.raises(ConfigError, match="--sigma"):
        parse_args(base + ["--sigma", "big"])
    text = " ".join(build_parser().format_help().split())
    assert "--preset PRESET" in text and "(default: 'auto')" in text.split("--sigma SIGMA Ray", 1)[1].split("--ray-path", 1)[0]


def test_time_sampler_options_are_checked_used_and_recorded(tiny, tmp_path):
    from training.config import ConfigError

    for bad, msg in ((dict(time_sampler_target="norm"), "--time-sampler-target"),
                     (dict(time_sampler_uniform=0.0), "--time-sampler-uniform"),
                     (dict(time_sampler_warmup=-1), "--time-sampler-warmup"),
                     (dict(time_sampler_input="text"), "--time-sampler-input")):
        with pytest.raises(ConfigError, match=msg):
            DistillConfig(model="m", prompts="p.txt", output="o.safetensors", **bad).validate()
    model, prompts = tiny
    out = tmp_path / "ts.safetensors"
    assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 3, *FAST,
                   "--time-sampler-biased", "--time-sampler-target", "grad", "--time-sampler-uniform", "0.5",
                   "--time-sampler-input", "none") == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["rayflow.time_sampler_options"] == "target=grad,uniform=0.5,warmup=0,biased=True,input=none"
    last = (tmp_path / "ts.work" / "log.csv").read_text().strip().splitlines()[-1].split(",")
    assert last[0] == "3" and float(last[5]) == 1.0 and float(last[6]) == 1.0      # biased: every weight 1


def test_phase1_items_do_not_depend_on_sharding(tiny, tmp_path):
    from training.data import load_cache

    model, prompts = tiny
    caches = []
    for shard in (2, 3):
        out = tmp_path / f"s{shard}.safetensors"
        args = [a if a != "2" else str(shard) for a in FAST]
        assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 1, *args) == 0
        caches.append(load_cache(str(tmp_path / f"s{shard}.work" / "cache")))
    # the noise is bit-identical; teacher outputs differ only by the round-off of batched
    # convolutions over different batch sizes (a different seed would differ by O(1))
    torch.testing.assert_close(caches[0].noise, caches[1].noise, rtol=0, atol=0)
    for name in ("x0", "eps_mu", "cond"):
        torch.testing.assert_close(getattr(caches[0], name), getattr(caches[1], name), rtol=1e-3, atol=1e-3)
    assert caches[0].prompts == caches[1].prompts == ["a red cat", "a blue house", "a small green tree"]


def _spawn(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "training.distill", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc, condition, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("condition for the kill never became true")


@pytest.mark.parametrize("extra", [[], ["--base-precision", "bf16"], ["--optimizer", "adamw8bit"]],
                         ids=["fp32-adamw", "bf16-base", "adamw8bit"])
def test_kill_and_resume_phase2_ends_with_the_same_lora(tiny, tmp_path, extra):
    """SIGKILLed after a few checkpoints and resumed: the LoRA equals an uninterrupted run's, also with a
    bf16 base model and with bitsandbytes' 8-bit AdamW (its quantised state goes through the checkpoint)."""
    if "adamw8bit" in extra:
        pytest.importorskip("bitsandbytes")
    model, prompts = tiny
    common = ["--model", model, "--prompts", prompts, "--train-steps", 40, "--checkpoint-every", 5, *FAST, *extra]
    ref = tmp_path / "ref.safetensors"
    assert _spawn([*common, "--output", ref]).wait() == 0
    out = tmp_path / "killed.safetensors"
    proc = _spawn([*common, "--output", out])
    state = tmp_path / "killed.work" / "checkpoint" / "state.json"
    _kill_when(proc, lambda: state.is_file() and (tmp_path / "killed.work" / "log.csv").read_text().count("\n") >= 3)
    assert not out.exists()
    resumed = _spawn([*common, "--output", out, "--resume"])
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-800:]
    a, b = load_file(str(ref)), load_file(str(out))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_kill_and_resume_phase1_loses_and_duplicates_nothing(tiny, tmp_path):
    from training.data import load_cache

    model, prompts = tiny
    common = ["--model", model, "--prompts", prompts, "--train-steps", 1, "--seeds-per-prompt", 6,
              "--resolution", "16", "--teacher-steps", 8, "--batch-size", 2, "--lora-rank", 2, "--shard-size", 1]
    ref = tmp_path / "ref.safetensors"
    assert _spawn([*common, "--output", ref]).wait() == 0
    out = tmp_path / "killed.safetensors"
    proc = _spawn([*common, "--output", out])
    cache = tmp_path / "killed.work" / "cache"
    _kill_when(proc, lambda: len(list(cache.glob("shard_*.safetensors"))) >= 3)
    done_before = len(list(cache.glob("shard_*.safetensors")))
    assert 3 <= done_before < 18
    resumed = _spawn([*common, "--output", out])
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-800:]
    a, b = load_cache(str(tmp_path / "ref.work" / "cache")), load_cache(str(cache))
    assert a.x0.shape[0] == b.x0.shape[0] == 18
    for name in ("x0", "eps_mu", "noise", "cond"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


def _bad_input_cases(tiny, tmp_path):
    model, prompts = tiny
    corrupt = tmp_path / "corrupt"
    build_tiny_sd15(str(corrupt))
    (corrupt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    afile = tmp_path / "afile"
    afile.write_text("x")
    return [
        (["--model", tmp_path / "nowhere", "--prompts", prompts], "base model not found", None),
        (["--model", corrupt, "--prompts", prompts], "cannot load the UNet", None),
        (["--model", model, "--prompts", prompts, "--architecture", "kandinsky"], "--architecture must be one of", None),
        (["--model", model, "--prompts", empty], "prompts file has no prompts", None),
        (["--model", model, "--prompts", binary], "prompts file is not UTF-8 text", None),
        (["--model", model, "--prompts", tmp_path / "missing.txt"], "prompts file not found", None),
        (["--model", model, "--prompts", tmp_path], f"--prompts {tmp_path} is a folder; give a prompts file", None),
        (["--model", model, "--prompts", prompts, "--loss-weighting", "snr"], "--loss-weighting must be one of", None),
        (["--model", model, "--prompts", prompts, "--start-anchor", "2"], "--start-anchor must be in [0, 1]", None),
        (["--model", model, "--prompts", prompts, "--start-anchor", "0.5", "--no-ray"], "--no-ray does not use", None),
        (["--model", model, "--prompts", prompts, "--save-precision", "fp8"], "--save-precision must be one of", None),
        (["--model", model, "--prompts", prompts, "--resolution", "20"], "--resolution must be a positive multiple of 8", None),
        (["--model", model, "--prompts", prompts], "output location is not writable", afile / "sub" / "x.safetensors"),
    ]


def test_each_bad_input_ends_with_one_clear_line_and_no_output(tiny, tmp_path, capsys):
    for args, message, output in _bad_input_cases(tiny, tmp_path):
        out = output or tmp_path / "never.safetensors"
        capsys.readouterr()
        rc = run_cli(*args, "--output", out, "--train-steps", 2, *[a for a in FAST if a != "--resolution" and a != "16"]
                     if "--resolution" in args else [*FAST])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (args, err)
        assert "Traceback" not in "\n".join(err)
        assert not os.path.exists(out) and not os.path.exists(str(out) + ".tmp")


def test_resume_from_a_different_configuration_is_refused(tiny, tmp_path, capsys):
    model, prompts = tiny
    out = tmp_path / "r.safetensors"
    assert run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 3, *FAST) == 0
    os.remove(out)
    capsys.readouterr()
    args = [a if a != "4" else "8" for a in FAST]          # another LoRA rank and batch size
    rc = run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 3, "--resume", *args)
    err = capsys.readouterr().err
    assert rc == 2 and "was made with a different configuration" in err and not out.exists()
    rc = run_cli("--model", model, "--prompts", prompts, "--output", out, "--train-steps", 3, *FAST)
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a training checkpoint: pass --resume" in err and not out.exists()


def test_checkpoints_from_before_an_option_existed_resume_at_its_default():
    cfg = DistillConfig(model="m", prompts="p.txt", output="o.safetensors").validate()
    old = {k: v for k, v in cfg.fingerprint().items() if k != "start_anchor"}     # written before --start-anchor
    assert cfg.matches_fingerprint(cfg.fingerprint()) and cfg.matches_fingerprint(old)
    assert not DistillConfig(model="m", prompts="p.txt", output="o.safetensors", start_anchor=0.5).validate() \
        .matches_fingerprint(old)
    assert not cfg.matches_fingerprint({**old, "sigma": 0.5})
    assert not cfg.matches_fingerprint({**cfg.fingerprint(), "retired_option": 1})


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    rc = run_cli("--model", tmp_path / "nowhere", "--prompts", tmp_path / "p.txt", "--output",
                 tmp_path / "o.safetensors", "--debug")
    assert rc == 2 and "Traceback" in capsys.readouterr().err


def test_help_documents_every_option():
    import dataclasses

    text = build_parser().format_help()
    for f in dataclasses.fields(DistillConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "--config" in text


def test_help_shows_no_default_for_required_options():
    text = " ".join(build_parser().format_help().split())
    assert "(required) (default:" not in text and "(default: '')" not in text
    for flag in ("--model MODEL", "--prompts PROMPTS", "--output OUTPUT"):
        assert text.split(flag, 2)[2].split(" --", 1)[0].rstrip().endswith("(required)")
    assert "(default: 25)" in text.split("--teacher-steps TEACHER_STEPS", 2)[2].split(" --", 1)[0]


def test_config_file_keys_match_flags_and_flags_win(tmp_path):
    from training.config import ConfigError, parse_args

    toml = tmp_path / "run.toml"
    toml.write_text('model = "m"\nprompts = "p.txt"\noutput = "o.safetensors"\nlora-rank = 8\nsigma = 0.1\n')
    cfg = parse_args(["--config", str(toml), "--sigma", "0.5"])
    assert cfg.lora_rank == 8 and cfg.sigma == 0.5 and cfg.work_dir == "o.work"
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model: m\nprompts: p.txt\noutput: o.safetensors\nteacher_steps: 7\n")
    assert parse_args(["--config", str(yaml_file)]).teacher_steps == 7
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "m"\nlearning_rat = 1\n')
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'"):
        parse_args(["--config", str(bad)])


def test_prompt_file_formats(tmp_path):
    from training.prompts import PromptsError, read_prompts

    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n\n{"prompt": " a dog "}\n')
    assert read_prompts(str(tmp_path / "p.jsonl")) == ["a cat", "a dog"]
    (tmp_path / "p.csv").write_text('id,prompt\n1,a cat\n2,"a dog, running"\n')
    assert read_prompts(str(tmp_path / "p.csv")) == ["a cat", "a dog, running"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a cat"}\n')
    with pytest.raises(PromptsError, match="line 1 has no string field"):
        read_prompts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.csv").write_text('id,text\n1,a cat\n')
    with pytest.raises(PromptsError, match="has no 'prompt' column"):
        read_prompts(str(tmp_path / "bad.csv"))


@pytest.mark.parametrize("flag, value, message", [
    ("--learning-rate", "nan", "--learning-rate must be a finite number in (0, 1]"),
    ("--learning-rate", "-1", "--learning-rate must be a finite number in (0, 1]"),
    ("--learning-rate", "inf", "--learning-rate must be a finite number"),
    ("--learning-rate", "0", "--learning-rate must be a finite number"),
    ("--weight-decay", "nan", "--weight-decay must be a finite number in [0, 10]"),
    ("--time-sampler-lr", "nan", "--time-sampler-lr must be a finite number"),
    ("--lora-alpha", "nan", "--lora-alpha must be a finite number in (0, 1e+06]"),
    ("--lora-alpha", "0", "--lora-alpha must be a finite number"),
    ("--teacher-cfg", "inf", "--teacher-cfg must be a finite number in [0, 100]"),
    ("--lr-warmup", "-10", "--lr-warmup must be >= 0"),
    ("--recommended-steps", "0", "--recommended-steps must be in [1, 50] (the range the RayFlow LoRA Loader accepts)"),
    ("--recommended-steps", "100", "--recommended-steps must be in [1, 50]"),
])
def test_numbers_are_checked_before_any_work(flag, value, message):
    """Config level only: parse_args refuses these before phase 1 could start."""
    from training.config import ConfigError, parse_args

    with pytest.raises(ConfigError) as err:
        parse_args(["--model", "m", "--prompts", "p.txt", "--output", "o.safetensors", flag, value])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_flag_abbreviations_are_refused_like_unknown_config_keys(capsys):
    from training.config import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--model", "m", "--prompts", "p.txt", "--output", "o.safetensors", "--learning-rat", "1e-4"])
    assert exit_.value.code == 2 and "unrecognized arguments: --learning-rat" in capsys.readouterr().err


@pytest.mark.parametrize("flags,notice", [
    (["--no-time-sampler", "--time-sampler-lr", "1e-2"], "--time-sampler-lr is ignored with --no-time-sampler"),
    (["--no-ray", "--sigma", "0.2"], "--sigma is ignored with --no-ray"),
    (["--train-steps", "10", "--save-every", "20"], "--save-every is ignored with --train-steps 10"),
    (["--model-config", "."], "--model-config is ignored with a diffusers-folder --model"),
])
def test_an_ignored_option_is_reported(tmp_path, flags, notice):
    from training.config import parse_args

    cfg = parse_args(["--model", str(tmp_path), "--prompts", "p.txt", "--output", "o.safetensors", *flags])
    assert any(n.startswith(notice) for n in cfg.notices), cfg.notices
    plain = parse_args(["--model", str(tmp_path), "--prompts", "p.txt", "--output", "o.safetensors"])
    assert plain.notices == []                   # the presets' own values are not the user's options


def test_an_output_the_run_did_not_write_is_kept_unless_overwrite(tiny, tmp_path, capsys):
    model, prompts = tiny
    out = tmp_path / "lora.safetensors"
    out.write_bytes(b"someone else's file")
    args = ["--model", model, "--prompts", prompts, "--output", out, "--train-steps", 2, *FAST]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "lora.safetensors already exists and this run" in err and "--overwrite" in err
    assert out.read_bytes() == b"someone else's file" and not (tmp_path / "lora.work").exists()   # nothing done
    assert run_cli(*args, "--overwrite") == 0 and out.read_bytes() != b"someone else's file"
    # its own earlier result: the same work dir runs again (here: resumed at its end, exported again)
    assert run_cli(*args, "--resume") == 0
    import shutil

    shutil.rmtree(tmp_path / "lora.work")          # that record is gone: the file is no longer known as ours
    assert run_cli(*args) == 2


def _same_files(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_interrupted_runs_keep_each_log_row_once_and_rederive_the_missing_snapshot(tiny, tmp_path, monkeypatch):
    """Killed after the step-5 checkpoint but before its snapshot, with steps 6-7 already logged: the
    resumed run writes snapshot 5 again and logs each step once, and every file equals an
    uninterrupted run's."""
    model, prompts = tiny
    common = ["--model", model, "--prompts", prompts, "--train-steps", 10, "--checkpoint-every", 5,
              "--save-every", 5, *FAST, "--log-every", 1]
    ref = tmp_path / "ref.safetensors"
    assert run_cli(*common, "--output", ref) == 0
    import training.export
    from training.trainer import Trainer

    out = tmp_path / "cut.safetensors"
    real_write, real_step = training.export.write_lora, Trainer.train_step
    lost = {"snapshot": True, "step": True}

    def write_lora(path, *a, **k):              # the kill lands between checkpoint 5 and its snapshot ...
        if path.endswith("-step000005.safetensors") and lost["snapshot"]:
            lost["snapshot"] = False
            return None
        return real_write(path, *a, **k)

    def train_step(self):                        # ... and the run goes on to step 7 before it dies
        if self.step == 7 and lost["step"]:
            lost["step"] = False
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(training.export, "write_lora", write_lora)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert run_cli(*common, "--output", out) == 130
    snap = tmp_path / "cut-step000005.safetensors"
    assert not snap.exists() and (tmp_path / "cut.work" / "log.csv").read_text().count("\n") == 1 + 7
    assert run_cli(*common, "--output", out, "--resume") == 0
    steps = [int(r.split(",")[0]) for r in (tmp_path / "cut.work" / "log.csv").read_text().strip().splitlines()[1:]]
    assert steps == list(range(1, 11))
    records = [json.loads(line)["step"] for line in (tmp_path / "cut.work" / "time_sampler.jsonl").read_text().splitlines()]
    assert records == sorted(set(records))
    _same_files(snap, tmp_path / "ref-step000005.safetensors")
    _same_files(out, ref)


def test_a_run_stopped_before_its_first_checkpoint_logs_each_step_once_after_resume(tiny, tmp_path, monkeypatch):
    model, prompts = tiny
    common = ["--model", model, "--prompts", prompts, "--train-steps", 8, "--checkpoint-every", 5, *FAST,
              "--log-every", 1]
    from training.trainer import Trainer

    real_step, stop = Trainer.train_step, {"at": 3}

    def train_step(self):
        if self.step == stop["at"]:
            stop["at"] = None
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    out = tmp_path / "cut.safetensors"
    assert run_cli(*common, "--output", out) == 130
    work = tmp_path / "cut.work"
    assert not (work / "checkpoint").exists() and (work / "log.csv").read_text().count("\n") == 1 + 3
    assert run_cli(*common, "--output", out, "--resume") == 0      # no checkpoint: it starts over
    steps = [int(r.split(",")[0]) for r in (work / "log.csv").read_text().strip().splitlines()[1:]]
    assert steps == list(range(1, 9))
    records = [json.loads(line)["step"] for line in (work / "time_sampler.jsonl").read_text().splitlines()]
    assert records == sorted(set(records))


def test_a_checkpoint_that_does_not_load_falls_back_to_the_previous_one(tiny, tmp_path, capsys):
    model, prompts = tiny
    common = ["--model", model, "--prompts", prompts, "--train-steps", 10, "--checkpoint-every", 5, *FAST]
    ref = tmp_path / "ref.safetensors"
    assert run_cli(*common, "--output", ref) == 0
    out = tmp_path / "cut.safetensors"
    assert run_cli(*common, "--output", out, "--train-steps", 10) == 0
    work = tmp_path / "cut.work"
    assert (work / "checkpoint.prev").is_dir()           # the step-5 checkpoint, kept beside the final one
    tensors = work / "checkpoint" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])      # the newest checkpoint is damaged
    capsys.readouterr()
    assert run_cli(*common, "--output", out, "--resume") == 0     # trains steps 6-10 again from checkpoint.prev
    captured = capsys.readouterr()
    assert f"the checkpoint in {work / 'checkpoint'} does not load" in captured.out
    _same_files(out, ref)
    for name in ("checkpoint", "checkpoint.prev"):
        (work / name / "state.json").write_text("{broken")
    assert run_cli(*common, "--output", out, "--resume") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: no checkpoint in") and "checkpoint.prev" in last and "delete them" in last


def test_a_damaged_cache_shard_or_manifest_is_named_and_rebuilt(tiny, tmp_path, capsys):
    from training.data import load_cache

    model, prompts = tiny
    common = ["--model", model, "--prompts", prompts, "--train-steps", 2, *FAST]
    out = tmp_path / "lora.safetensors"
    assert run_cli(*common, "--output", out) == 0
    cache = tmp_path / "lora.work" / "cache"
    before = load_cache(str(cache))
    shard = sorted(cache.glob("shard_*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-7])               # truncated
    (cache / "manifest.json").write_text('{"fingerprint": ')  # cut short
    capsys.readouterr()
    assert run_cli(*common, "--output", out, "--resume") == 0
    text = capsys.readouterr().out
    assert f"the phase-1 manifest {cache / 'manifest.json'} is damaged" in text
    assert f"the phase-1 cache shard {shard} is damaged" in text
    after = load_cache(str(cache))
    for name in ("x0", "eps_mu", "noise", "sigma_star"):
        assert torch.equal(getattr(before, name), getattr(after, name))
    assert json.loads((cache / "manifest.json").read_text())["complete"] is True


def _kill_points(seed, shards, steps, first_checkpoint, n_phase1=4, n_phase2=6):
    """A seeded series of kill points: ``("shards", k)`` kills once phase 1 has written k cache
    shards, ``("rows", k)`` once phase 2 has logged k steps (one before the first checkpoint, the
    others at and between later ones)."""
    import random

    rng = random.Random(seed)
    return ([("shards", k) for k in sorted(rng.sample(range(1, shards), n_phase1))]
            + [("rows", rng.randrange(1, first_checkpoint))]
            + [("rows", k) for k in sorted(rng.sample(range(first_checkpoint, steps - 2), n_phase2 - 1))])


def _log_rows(path):
    """log.csv without its timing column (the only value that may differ between identical runs)."""
    rows = path.read_text().strip().splitlines()
    return [r.rsplit(",", 1)[0] for r in rows]


@pytest.mark.slow
def test_a_seeded_series_of_kills_across_both_phases_changes_no_bit(tiny, tmp_path):
    """Ten SIGKILLs of one run at seeded points of phase 1 (between cache shards) and phase 2
    (before the first checkpoint, between checkpoints, next to snapshots), each followed by
    ``--resume``: the final LoRA, every snapshot, the cache and the logs equal an uninterrupted
    run's bit for bit."""
    from training.data import load_cache

    model, prompts = tiny
    steps = 24
    common = ["--model", model, "--prompts", prompts, "--seeds-per-prompt", 4, "--train-steps", steps,
              "--checkpoint-every", 4, "--save-every", 6, *FAST, "--shard-size", 1, "--log-every", 1]
    ref = tmp_path / "ref.safetensors"
    assert _spawn([*common, "--output", ref]).wait() == 0
    shards = len(list((tmp_path / "ref.work" / "cache").glob("shard_*.safetensors")))
    assert shards == 12
    out, work = tmp_path / "killed.safetensors", tmp_path / "killed.work"
    points = _kill_points(2026, shards, steps, first_checkpoint=4)
    assert len(points) >= 10

    def reached(kind, k):
        if kind == "shards":
            return len(list((work / "cache").glob("shard_*.safetensors"))) >= k
        log = work / "log.csv"
        return log.is_file() and log.read_text().count("\n") - 1 >= k

    for kind, k in points:
        proc = _spawn([*common, "--output", out, "--resume"])
        _kill_when(proc, lambda: reached(kind, k))
        assert not out.exists()
    resumed = _spawn([*common, "--output", out, "--resume"])
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-800:]
    _same_files(out, ref)
    for step in range(6, steps, 6):
        _same_files(tmp_path / f"killed-step{step:06d}.safetensors", tmp_path / f"ref-step{step:06d}.safetensors")
    a, b = load_cache(str(tmp_path / "ref.work" / "cache")), load_cache(str(work / "cache"))
    for name in ("x0", "eps_mu", "noise", "sigma_star"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.cond.keys() == b.cond.keys() and all(torch.equal(a.cond[k], b.cond[k]) for k in a.cond)
    assert a.prompts == b.prompts
    assert _log_rows(work / "log.csv") == _log_rows(tmp_path / "ref.work" / "log.csv")
    assert (work / "time_sampler.jsonl").read_text() == (tmp_path / "ref.work" / "time_sampler.jsonl").read_text()
