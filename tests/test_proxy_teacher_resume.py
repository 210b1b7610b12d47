"""proxy.teacher.fit with a checkpoint: a run stopped and started again ends with the weights of an
uninterrupted run."""

import pytest
import torch

from proxy.teacher import fit


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))   # a non-float entry of the state
        self.tied = self.conv                     # tied weights, as T5's shared embedding: one memory, two keys


def _loss(model):
    def loss_fn(x0, captions, noise, g):
        t = torch.rand(len(x0), 1, 1, 1, generator=g)
        return (model.conv((1 - t) * x0 + t * noise) - (noise - x0)).pow(2).mean()
    return loss_fn


def test_a_resumed_teacher_run_ends_as_an_uninterrupted_one(tmp_path):
    straight = _Tiny()
    fit([straight], _loss(straight), steps=6, batch=4, seed=3, lr=1e-2, log_every=100)
    ckpt = str(tmp_path / "state")
    first = _Tiny()
    fit([first], _loss(first), steps=6, batch=4, seed=3, lr=1e-2, log_every=100, checkpoint=ckpt, checkpoint_every=2)
    assert (tmp_path / "state" / "state.safetensors").is_file()
    # a run killed during step 5 (its checkpoint holds step 4); the same command continues from there
    interrupted, calls = _Tiny(), []

    def dies_at_step_5(x0, captions, noise, g):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return _loss(interrupted)(x0, captions, noise, g)

    with pytest.raises(KeyboardInterrupt):
        fit([interrupted], dies_at_step_5, steps=6, batch=4, seed=3, lr=1e-2, log_every=100,
            checkpoint=str(tmp_path / "part"), checkpoint_every=2)
    resumed, steps_run = _Tiny(), []

    def counted(x0, captions, noise, g):
        steps_run.append(1)
        return _loss(resumed)(x0, captions, noise, g)

    fit([resumed], counted, steps=6, batch=4, seed=3, lr=1e-2, log_every=100,
        checkpoint=str(tmp_path / "part"), checkpoint_every=2)
    assert len(steps_run) == 2                       # steps 5 and 6 only: it continued, it did not start over
    for model in (first, resumed):
        for k, v in straight.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


def test_a_state_from_other_settings_is_one_line_and_left_alone(tmp_path):
    model = _Tiny()
    fit([model], _loss(model), steps=2, batch=4, seed=3, lr=1e-2, log_every=100, checkpoint=str(tmp_path / "s"))
    before = (tmp_path / "s" / "state.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="belongs to a run with steps 2 .*this one: steps 3"):
        fit([model], _loss(model), steps=3, batch=4, seed=3, lr=1e-2, log_every=100, checkpoint=str(tmp_path / "s"))
    assert (tmp_path / "s" / "state.safetensors").read_bytes() == before
    # a teacher's own settings (the flow teacher's time shift) are checked the same way
    with pytest.raises(SystemExit, match="belongs to a run with shift None .*this one: shift 1.0"):
        fit([model], _loss(model), steps=2, batch=4, seed=3, lr=1e-2, log_every=100, checkpoint=str(tmp_path / "s"),
            settings={"shift": 1.0})
    assert (tmp_path / "s" / "state.safetensors").read_bytes() == before


def test_the_flow_teachers_own_options_are_checked_before_any_work(capsys):
    from proxy import teacher_flow

    with pytest.raises(SystemExit):
        teacher_flow.main(["--shift", "0", "--steps", "1"])
    assert "--shift must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        teacher_flow.main(["--patch-size", "3", "--steps", "1"])
    assert "--patch-size: invalid choice" in capsys.readouterr().err


def test_the_device_option_is_checked_before_any_work(capsys):
    from proxy.teacher import teacher_args, teacher_parser

    assert teacher_args(teacher_parser("t", "out", 10), []).device == "cpu"     # the committed weights were made on the CPU
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            teacher_args(teacher_parser("t", "out", 10), ["--device", "cuda"])
        assert "torch sees no CUDA device here" in capsys.readouterr().err


def test_export_state_writes_the_teacher_a_run_would_write_at_that_step(tmp_path, capsys):
    """``--export-state`` builds the teacher of a state's EMA weights with the run's own settings: at
    the last step that is the folder the run itself wrote; bad use is one line and writes nothing."""
    from safetensors.torch import load_file

    from proxy import teacher_flow

    ckpt, trained, exported = (str(tmp_path / n) for n in ("state", "trained", "exported"))
    teacher_flow.train(trained, steps=2, batch=2, seed=1, lr=1e-3, checkpoint=ckpt, shift=2.0, patch_size=4)
    assert teacher_flow.main(["--export-state", "--checkpoint", ckpt, "--out", exported]) == 0
    assert "at step 2" in capsys.readouterr().out
    for sub, name in (("transformer", "diffusion_pytorch_model"), ("text_encoder", "model"), ("text_encoder_2", "model"),
                      ("text_encoder_3", "model")):
        a, b = (load_file(str(tmp_path / d / sub / f"{name}.safetensors")) for d in ("trained", "exported"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    with open(tmp_path / "exported" / "scheduler" / "scheduler_config.json") as f:
        assert '"shift": 2.0' in f.read()
    for argv, msg in ((["--export-state", "--checkpoint", ckpt, "--out", exported], "exists; give another --out"),
                      (["--export-state", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x")],
                       "needs --checkpoint DIR with a training state")):
        with pytest.raises(SystemExit):
            teacher_flow.main(argv)
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
