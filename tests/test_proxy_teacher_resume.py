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
