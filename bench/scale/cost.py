"""Hours of the default recipe: from a CPU run's measured speed, and on named GPUs from counted FLOPs.

A GPU estimate is counted FLOPs / (the GPU's dense peak x an assumed model-FLOPs utilisation,
:data:`MFU`): phase 1 is the recipe's teacher steps per trajectory for :data:`PROMPTS` trajectories,
phase 2 the recipe's steps at its batch size. A frozen base in bf16 runs at the bf16 tensor peak,
one in fp32 at the fp32 (non-tensor) peak, torch's default for fp32 matmuls; a quantized one (nf4 /
int8) at the bf16 peak it computes at (bitsandbytes' dequantization is not counted). Every figure
made here is an estimate, labelled so wherever it is shown, until a GPU measurement replaces it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .recipe import MEMORY_OPTIONS

ESTIMATED = "estimated from counted FLOPs, not measured"
# dense (no structured sparsity) peaks in TFLOPS, from the vendor's datasheets
GPUS: Dict[str, Dict] = {
    "H100": dict(name="H100 SXM", bf16_tflops=989.4, fp32_tflops=66.9, memory_gb=80,
                 source="NVIDIA H100 Tensor Core GPU datasheet (SXM): BF16 Tensor Core 1,979 TFLOPS with sparsity, "
                        "989.4 dense; FP32 67 TFLOPS"),
    "A100": dict(name="A100 SXM 80GB", bf16_tflops=312.0, fp32_tflops=19.5, memory_gb=80,
                 source="NVIDIA A100 Tensor Core GPU datasheet: BFLOAT16 Tensor Core 312 TFLOPS (624 with sparsity); "
                        "FP32 19.5 TFLOPS"),
    "RTX 4090": dict(name="GeForce RTX 4090", bf16_tflops=165.2, fp32_tflops=82.6, memory_gb=24,
                     source="NVIDIA Ada GPU architecture whitepaper, appendix A: peak BF16 Tensor TFLOPS with FP32 "
                            "accumulate 165.2 (330.4 with sparsity); peak FP32 82.6 TFLOPS"),
}
# GPUs whose compute peaks are another's (a measurement on one is compared with the other's estimate)
SAME_PEAKS = {"H200": "H100"}
MFU = 0.30
PROMPTS = 1000
PROMPTS_BASIS = ("the recipe fixes no prompt count: 1000 prompts x 1 seed, as for the CPU's phase-1 figures; phase 1 "
                 "scales with prompts x --seeds-per-prompt")
# published end-to-end inference throughputs of the same denoisers (guidance on: a batch of 2 per step);
# their utilisation, with the FLOPs counted here, is the basis of MFU
MFU_EVIDENCE: List[Dict] = [
    dict(family="sd15", gpu="A100", steps_per_s=31.44, resolution=512,
         source="fal-ai/stable-diffusion-benchmarks README: SD1.5, A100 80G SXM, fp16, diffusers (torch 2.1, SDPA), "
                "50 steps, end-to-end 31.44 it/s"),
    dict(family="sdxl", gpu="A100", steps_per_s=8.43, resolution=1024,
         source="fal-ai/stable-diffusion-benchmarks README: SDXL, A100 80G SXM, fp16, diffusers (torch 2.1, SDPA), "
                "50 steps, end-to-end 8.43 it/s"),
]
MFU_BASIS = ("an assumption. Published diffusers inference of the same denoisers on an A100 (fp16, SDPA, guidance on) "
             "reaches the utilisations implied below with the FLOPs counted here, end to end (text encoders and VAE "
             "included, so the denoiser alone runs a little higher); SD1.5's denoiser batch of 2 is too small to fill "
             "the GPU. Phase 2's batch of 16 fills it better than inference does; its fp32 LoRA branches, the "
             "backward's memory-bound work and faster GPUs (an H100 gains more compute than bandwidth over an A100) "
             "pull the other way. Hours scale as the assumed MFU over the true one.")


def peak_tflops(gpu: str, base_precision: str) -> float:
    """The dense peak a frozen base in ``base_precision`` runs at on ``gpu``."""
    spec = GPUS[SAME_PEAKS.get(gpu, gpu)]
    return spec["fp32_tflops"] if base_precision == "fp32" else spec["bf16_tflops"]


def gpu_estimate(counts: Dict, option: str, gpu: str, mfu: float = MFU, prompts: int = PROMPTS) -> Dict:
    """Seconds and hours of the default recipe for one family's ``counts`` (``count.count_family``)
    with the memory ``option`` on ``gpu`` at utilisation ``mfu``, and whether phase 2's counted
    memory fits the GPU."""
    opts = MEMORY_OPTIONS[option]
    rate = peak_tflops(gpu, opts["base_precision"]) * mfu
    step = counts["phase2_step_tflop"]["gc" if opts["gradient_checkpointing"] else "no_gc"]["total"]
    s_traj = counts["teacher_steps"] * counts["teacher_step_tflop"] / rate
    s_step = step / rate
    p1, p2 = prompts * s_traj / 3600, counts["train_steps"] * s_step / 3600
    memory = counts["phase2_memory"][option]["total_gib"]
    return {"phase1_s_per_trajectory": _sig(s_traj), "phase2_s_per_step": _sig(s_step), "phase1_hours": _sig(p1),
            "phase2_hours": _sig(p2), "total_hours": _sig(p1 + p2), "phase2_memory_gib": memory,
            "fits": memory <= GPUS[gpu]["memory_gb"] * 1e9 / 2 ** 30}


def _sig(x: float) -> float:
    """``x`` to 4 significant digits (an estimate has no more)."""
    return float(f"{x:.4g}")


def family_estimates(counts: Dict, mfu: float = MFU, prompts: int = PROMPTS) -> Dict:
    """:func:`gpu_estimate` for every memory option counted (the family's) and every GPU."""
    return {option: {gpu: gpu_estimate(counts, option, gpu, mfu, prompts) for gpu in GPUS}
            for option in counts["phase2_memory"]}


def implied_mfu(evidence: Dict, counts: Dict) -> float:
    """The utilisation a published throughput ``evidence`` (teacher steps with guidance per second)
    reaches with the teacher step's counted FLOPs."""
    return evidence["steps_per_s"] * counts["teacher_step_tflop"] / peak_tflops(evidence["gpu"], "bf16")


def measured_hours(s_per_teacher_step: float, s_per_step: float, counts: Dict, prompts: int = PROMPTS) -> Dict:
    """Hours of the default recipe at measured speeds (per teacher step per trajectory, per phase-2
    step at the recipe's batch), on the same terms as :func:`gpu_estimate`."""
    p1 = prompts * counts["teacher_steps"] * s_per_teacher_step / 3600
    p2 = counts["train_steps"] * s_per_step / 3600
    return {"phase1_hours": p1, "phase2_hours": p2, "total_hours": p1 + p2}


def gpu_key(device_name: str) -> Optional[str]:
    """The key of :data:`GPUS` (or :data:`SAME_PEAKS`) that a CUDA device name names, or None."""
    for key in list(GPUS) + list(SAME_PEAKS):
        if key.replace(" ", "").lower() in device_name.replace(" ", "").lower():
            return key
    return None


def cpu_estimates(res: Dict, recipe: Dict[str, Any]) -> Dict:
    """Hours for the budget of the family's ``recipe`` (``Family.options()``: the default recipe with what
    the family sets) at a CPU run's measured speed (linear in batch size and steps)."""
    steps, batch, tsteps = recipe["train_steps"], recipe["batch_size"], recipe["teacher_steps"]
    p2 = res["phase2_s_per_step"] * batch / res["batch_size"] * steps / 3600
    p1 = res["phase1_s_per_teacher_step"] * tsteps * 1000 / 3600
    return {"phase2_hours_default_recipe": round(p2, 2), "phase1_hours_per_1000_prompts": round(p1, 2),
            "how": f"phase 2: s/step x {batch} / {res['batch_size']} (default --batch-size over the measured one) x "
                   f"{steps} default --train-steps; phase 1: s per teacher step per trajectory x {tsteps} default "
                   f"--teacher-steps x 1000 prompts (x --seeds-per-prompt); both assume time linear in batch and steps"}


def counted_record(counts: Dict[str, Dict], mfu: float = MFU, prompts: int = PROMPTS) -> Dict:
    """The results file of ``python -m bench.scale --flops``: per family its ``counts`` with the
    GPU estimates beside them, and what the estimates assume (peaks and their sources, the
    utilisation and its basis with the utilisations the published throughputs imply)."""
    evidence = [{**e, "implied_mfu": round(implied_mfu(e, counts[e["family"]]), 3)}
                for e in MFU_EVIDENCE if counts.get(e["family"], {}).get("resolution") == e["resolution"]]
    return {"kind": "counted", "label": ESTIMATED,
            "assumptions": {"mfu": mfu, "mfu_basis": MFU_BASIS, "prompts": prompts, "prompts_basis": PROMPTS_BASIS,
                            "peaks": "dense, without structured sparsity; a frozen base in fp32 runs at the fp32 peak, "
                                     "as torch runs fp32 matmuls without TF32 by default"},
            "gpus": GPUS, "mfu_evidence": evidence,
            "families": {f: {**c, "estimates": family_estimates(c, mfu, prompts)} for f, c in counts.items()}}
