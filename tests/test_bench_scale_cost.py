"""``bench.scale``'s GPU cost: FLOPs counted on the meta device through the trainer's own code (a toy
denoiser against a hand count), estimates that follow from counts, peaks and utilisation, the
committed counts against the figures the issue gives, and the GPU measurement's code path on the
tiny models (the CPU stands in for the GPU)."""

import json
import math
import os
import types

import pytest
import torch

from bench.scale import cli, cost, count, families, table
from bench.scale.recipe import MEMORY_OPTIONS
from training.config import DistillConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "docs", "results")


class Toy(torch.nn.Module):
    """A denoiser called as SD1.5's UNet is, of two 3x3 convolutions the LoRA targets name."""

    def __init__(self):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.conv_out = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x, t, encoder_hidden_states=None):
        return types.SimpleNamespace(sample=self.conv_out(self.conv_in(x)))


class ToyDenoiser(families.Denoiser):
    def build(self, device, dtype):
        with torch.device(device):
            net = Toy().to(dtype)
        return net.requires_grad_(False).eval()


def _toy(size=6):
    return ToyDenoiser(families.REGISTRY["sd15"], {"cross_attention_dim": 8}, resolution=8 * size, latent_size=size,
                       latent_channels=4)


def test_a_toy_denoisers_counted_flops_equal_a_hand_count():
    """Forward: both convolutions and their LoRA branches (A: 3x3 to rank r, B: 1x1 back). Backward:
    input gradients through the frozen weights where the input needs one (not into the data), the
    LoRA weights' gradients, never the frozen weights' gradients. Guidance doubles the teacher's batch."""
    den, r, B = _toy(), 4, 3
    px = B * den.latent_size ** 2                      # output pixels of every convolution in the batch
    cfg = DistillConfig(lora_rank=r, lora_targets="conv_in,conv_out", batch_size=B, base_precision="bf16")
    conv_in, conv_out = 2 * px * 8 * 4 * 9, 2 * px * 4 * 8 * 9
    a_in, b_in, a_out, b_out = 2 * px * r * 4 * 9, 2 * px * 8 * r, 2 * px * r * 8 * 9, 2 * px * 4 * r
    forward = conv_in + a_in + b_in + conv_out + a_out + b_out
    backward = (conv_out                 # grad of conv_out's input (conv_in's output carries LoRA grads)
                + 2 * b_out + 2 * a_out  # conv_out's LoRA: weight and input gradients
                + 2 * b_in + a_in)       # conv_in's LoRA: B's weight and input gradients, A's weight gradient only
    assert count.phase2_flops(den, cfg) == {"forward": forward, "backward": backward, "total": forward + backward}
    teacher = DistillConfig(teacher_cfg=4.5)
    assert count.teacher_step_flops(den, teacher) == 2 * (conv_in + conv_out) // B
    assert count.teacher_step_flops(den, DistillConfig(teacher_cfg=1.0)) == (conv_in + conv_out) // B
    assert count.forward_flops(den) == (conv_in + conv_out) // B


def test_gradient_checkpointing_adds_a_recomputed_forward_and_saves_activations():
    counts = count.count_family("sd15", tiny=True)
    plain, gc = counts["phase2_step_tflop"]["no_gc"], counts["phase2_step_tflop"]["gc"]
    assert gc["forward"] == plain["forward"]
    assert 0 < gc["backward"] - plain["backward"] <= plain["forward"]         # at most one forward again
    mem = counts["phase2_memory"]
    assert mem["bf16-gc"]["activations"] < mem["bf16"]["activations"] < mem["fp32"]["activations"]
    assert mem["bf16-gc-adamw8bit"]["lora_weights_grads_optimizer"] < mem["bf16-gc"]["lora_weights_grads_optimizer"]
    assert counts["lora_params"] > 0 and counts["denoiser_params"] > 0


def _counts(teacher=20.0, step=300.0, step_gc=450.0, memory=20.0):
    return {"teacher_steps": 25, "teacher_step_tflop": teacher, "train_steps": 1000,
            "phase2_step_tflop": {"no_gc": {"total": step}, "gc": {"total": step_gc}},
            "phase2_memory": {o: {"total_gib": memory} for o in MEMORY_OPTIONS}}


def test_estimates_follow_from_counts_peak_and_utilisation():
    est = cost.gpu_estimate(_counts(), "bf16", "H100", mfu=0.5, prompts=100)
    rate = 989.4 * 0.5
    assert math.isclose(est["phase1_s_per_trajectory"], 25 * 20.0 / rate, rel_tol=1e-3)
    assert math.isclose(est["phase2_s_per_step"], 300.0 / rate, rel_tol=1e-3)
    assert math.isclose(est["phase1_hours"], 100 * 25 * 20.0 / rate / 3600, rel_tol=1e-3)
    assert math.isclose(est["phase2_hours"], 1000 * 300.0 / rate / 3600, rel_tol=1e-3)
    gc = cost.gpu_estimate(_counts(), "bf16-gc", "A100", mfu=0.25)
    assert math.isclose(gc["phase2_hours"], 1000 * 450.0 / (312.0 * 0.25) / 3600, rel_tol=1e-3)
    fp32 = cost.gpu_estimate(_counts(), "fp32", "A100", mfu=0.25)          # fp32 runs at the fp32 peak
    assert math.isclose(fp32["phase2_hours"], 1000 * 300.0 / (19.5 * 0.25) / 3600, rel_tol=1e-3)
    half = cost.gpu_estimate(_counts(), "bf16", "H100", mfu=0.25, prompts=100)
    assert math.isclose(half["total_hours"], 2 * est["total_hours"], rel_tol=1e-2)   # hours scale as 1 / MFU
    assert cost.gpu_estimate(_counts(memory=23.0), "bf16", "RTX 4090")["fits"] is False    # 24 GB = 22.4 GiB
    assert cost.gpu_estimate(_counts(memory=22.0), "bf16", "RTX 4090")["fits"] is True


def test_the_committed_counts_match_the_issue_and_the_trained_lora():
    """SD1.5 at 512 and SDXL at 1024: one UNet forward at batch 1 is 0.80 and 6.76 TFLOP (counted by
    hand with FlopCounterMode before this module existed); the LoRA counted is the one the CPU runs
    trained; the estimates are the counts' at the file's utilisation."""
    with open(os.path.join(RESULTS, "scale_flops.json"), encoding="utf-8") as f:
        counted = json.load(f)
    with open(os.path.join(RESULTS, "scale_cpu.json"), encoding="utf-8") as f:
        cpu = json.load(f)
    fams = counted["families"]
    assert set(fams) == set(families.FAMILIES)          # every family the registry has
    assert math.isclose(fams["sd15"]["forward_tflop_batch1"], 0.80, rel_tol=0.03)
    assert math.isclose(fams["sdxl"]["forward_tflop_batch1"], 6.76, rel_tol=0.03)
    for family, c in fams.items():
        assert c["lora_params"] == cpu[family]["lora"]["params"], family
        # the CPU row counts the saved folder's tensors: SD3's fixed position-embedding table (226 M values) too
        buffers = cpu[family]["denoiser_params"] - c["denoiser_params"]
        assert buffers == (384 * 384 * 1536 if family == "sd35_medium" else 0), family
        guided = 2 if c["teacher_cfg"] != 1 else 1         # CFG doubles the batch; FLUX.1-dev's guidance is embedded
        assert math.isclose(c["teacher_step_tflop"], guided * c["forward_tflop_batch1"], rel_tol=1e-6)
        counts = {k: v for k, v in c.items() if k != "estimates"}
        assert c["estimates"] == json.loads(json.dumps(cost.family_estimates(counts, counted["assumptions"]["mfu"])))
    assert {e["family"] for e in counted["mfu_evidence"]} == {"sd15", "sdxl"}
    assert counted["command"] == "python -m bench.scale --flops"


def test_the_gpu_measurement_runs_the_trainer_and_the_table_shows_it_beside_the_estimate(tmp_path):
    """``--gpu-measure --tiny``: the GPU script's code on the tiny models (on the CPU here); the
    table puts a measurement first, says it is one, and gives the ratio to the estimate."""
    measured, counted = tmp_path / "gpu.json", tmp_path / "flops.json"
    assert cli.main(["--gpu-measure", "--tiny", "--families", "sd15", "--variants", "bf16", "--out", str(measured)]) == 0
    assert cli.main(["--flops", "--tiny", "--families", "sd15", "--out", str(counted)]) == 0
    gpu = json.loads(measured.read_text())
    row = gpu["families"]["sd15"]["options"]["bf16"]
    assert gpu["kind"] == "gpu measurement" and row["status"] == "measured" and row["s_per_step"] > 0
    assert len(row["step_times_s"]) == 2 and gpu["families"]["sd15"]["teacher"]["s_per_teacher_step_per_trajectory"] > 0
    gpu["device"]["name"] = "NVIDIA H100 80GB HBM3"      # as the GPU reports itself
    gpu["families"]["sd15"]["options"]["bf16"]["peak_memory_gib"] = 1.0
    with open(os.path.join(RESULTS, "scale_cpu.json"), encoding="utf-8") as f:
        cpu = json.load(f)
    text = table.table(cpu, json.loads(counted.read_text()), gpu)
    bf16 = next(line for line in text.splitlines() if line.startswith("| `bf16` |") and "measured on" in line)
    assert "**measured on NVIDIA H100 80GB HBM3:" in bf16 and "measured / estimated" in bf16
    assert "`bf16-gc`" in text and text.count("**measured on") == 2      # hours and memory of the one row


def test_gpu_measure_without_a_gpu_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli.main(["--gpu-measure", "--families", "sd15", "--out", "unused.json"]) == 2
