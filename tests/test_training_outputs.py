"""Issue 35, items 1 and 2: ``--save-every`` snapshots follow the ``--output`` rule (a file this work
dir did not write is kept unless ``--overwrite``, checked before any work), and a checkpoint whose
state parses but lacks a part falls back to ``checkpoint.prev`` or ends in one line."""

import json

import torch
from safetensors.torch import load_file

from tiny_run import TINY_FLAGS
from training.distill import main


def _run(tiny, out, *extra):
    model, prompts = tiny
    return main(["--model", model, "--prompts", prompts, *TINY_FLAGS, "--output", str(out), *map(str, extra)])


def test_a_snapshot_the_run_did_not_write_is_kept_unless_overwrite(tiny_sd15, tmp_path, capsys):
    out, snap = tmp_path / "o.safetensors", tmp_path / "o-step000001.safetensors"
    snap.write_bytes(b"precious\n")
    assert _run(tiny_sd15, out, "--save-every", 1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {snap} already exists and this run (work dir ")
    assert "pass --overwrite to replace it, or choose another --output" in err[0]
    assert snap.read_bytes() == b"precious\n" and not out.exists()
    assert not (tmp_path / "o.work").exists()                 # refused before any work
    assert _run(tiny_sd15, out, "--save-every", 1, "--overwrite") == 0
    assert snap.read_bytes() != b"precious\n" and out.is_file()
    # the work dir's own snapshot and output: the same command continues (resumed at its end, exported again)
    assert _run(tiny_sd15, out, "--save-every", 1, "--resume") == 0


def test_a_snapshot_recorded_before_its_rename_is_ours(tiny_sd15, tmp_path):
    """The hash is recorded before the snapshot is renamed into place, so a kill between the two leaves
    a file the next run knows as its own."""
    out, snap = tmp_path / "o.safetensors", tmp_path / "o-step000001.safetensors"
    assert _run(tiny_sd15, out, "--save-every", 1) == 0
    exports = json.loads((tmp_path / "o.work" / "exports.json").read_text())
    assert set(exports) == {str(snap), str(out)} and all(len(h) == 1 for h in exports.values())
    snap.unlink()
    snap.write_bytes(b"someone else's")
    assert _run(tiny_sd15, out, "--save-every", 1, "--resume") == 2   # a changed file is no longer ours


def _drop(state_json, key):
    tree = json.loads(state_json.read_text())
    tree["__dict__"] = [kv for kv in tree["__dict__"] if kv[0] != key]
    state_json.write_text(json.dumps(tree))


def test_a_checkpoint_state_lacking_a_key_falls_back_to_the_previous_one(tiny_sd15, tmp_path, capsys):
    steps = ["--train-steps", 4, "--checkpoint-every", 2]
    ref, out = tmp_path / "ref.safetensors", tmp_path / "cut.safetensors"
    assert _run(tiny_sd15, ref, *steps) == 0
    assert _run(tiny_sd15, out, *steps) == 0
    work = tmp_path / "cut.work"
    assert (work / "checkpoint.prev").is_dir()               # step 2, beside the final step 4
    _drop(work / "checkpoint" / "state.json", "fingerprint")
    capsys.readouterr()
    assert _run(tiny_sd15, out, *steps, "--resume") == 0      # trains steps 3-4 again from checkpoint.prev
    assert (f"note: the checkpoint in {work / 'checkpoint'} does not load (its state lacks 'fingerprint'); "
            f"trying the previous one") in capsys.readouterr().out
    a, b = load_file(str(ref)), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _drop(work / "checkpoint" / "state.json", "opt")
    _drop(work / "checkpoint.prev" / "state.json", "lora")
    assert _run(tiny_sd15, out, *steps, "--resume") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: no checkpoint in") and "delete them" in err[0]
