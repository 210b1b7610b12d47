"""Both phases under ``accelerate launch --cpu --num_processes 2`` (data-parallel, gloo on CPU)."""

import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from training.tiny import build_tiny_sd15

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_process_cpu_run(tmp_path):
    pytest.importorskip("accelerate")
    model = build_tiny_sd15(str(tmp_path / "model"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\na blue house\na small tree\n", encoding="utf-8")
    out = tmp_path / "o.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "training.distill", "--model", model, "--prompts", str(prompts), "--output", str(out),
           "--resolution", "16", "--teacher-steps", "2", "--batch-size", "2", "--lora-rank", "2",
           "--shard-size", "1", "--train-steps", "3", "--log-every", "1"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    shards = sorted(p.name for p in (tmp_path / "o.work" / "cache").glob("shard_*.safetensors"))
    assert shards == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["rayflow.architecture"] == "sd15" and len(list(f.keys())) > 0
    rows = (tmp_path / "o.work" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 4                      # header + 3 steps, written once (main process only)
