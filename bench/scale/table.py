"""The README's "Hardware and cost" tables, rendered from the results files.

One table per family, a row per memory option in ``MEMORY_OPTIONS`` order: the CPU measurement
(``docs/results/scale_cpu.json``) and, in the GPU columns, the hours and memory estimated from
counted FLOPs and tensors (``scale_flops.json``), or where a GPU measurement (``scale_gpu.json``) has
the row, the measured figure beside the estimate and their ratio. Under each table the commands
that made its figures and the counts; after the tables what the estimates assume.
``tests/test_bench_scale.py`` checks that README carries this text for the committed files, so
every figure there is a file's, next to the command that made it.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from .cost import ESTIMATED, GPUS, SAME_PEAKS, gpu_key, measured_hours
from .depth import EXTRAPOLATED, measured_points
from .families import FAMILIES, REGISTRY
from .recipe import GIB, MEMORY_OPTIONS

NOT_MEASURED = "not measured on a GPU"
COUNTED = "estimated from counted tensors, not measured"


def _gib(n) -> str:
    return f"{n / GIB:.1f}" if n else "-"


def _order(name: str) -> int:
    return list(MEMORY_OPTIONS).index(name) if name in MEMORY_OPTIONS else len(MEMORY_OPTIONS)


def _cpu_cells(v: Optional[Dict]) -> str:
    if v is None:
        return "not run on the CPU | - | - | -"
    if v.get("status") == EXTRAPOLATED:
        a, b = v["units_measured"]
        return (f"**extrapolated** to {v['units_full']} units from {a} and {b}: {v['peak_rss_gib']:.1f} GiB "
                f"({_gib(v['peak_rss_phase1_bytes'])}; phase 2 {_gib(v['peak_rss_by_phase_bytes']['phase 2'])}) | "
                f"{v['phase1_s_per_trajectory']:.1f} ({v['teacher_steps']} teacher steps; extrapolated) | "
                f"{v['phase2_s_per_step']:.1f} (extrapolated) | {v['estimates']['phase2_hours_default_recipe']:.0f} "
                f"(extrapolated)")
    if v.get("status") != "measured":
        reached = f"; RSS reached {v['watchdog_peak_rss_gib']:.1f} GiB" if v.get("watchdog_peak_rss_gib") else ""
        p1 = v.get("phase1_s_per_trajectory")
        return (f"{v.get('status', '-')}{reached} | {f'{p1:.1f}' if p1 else '-'} | "
                f"{', '.join(f'{t:.0f}' for t in v.get('step_times_s', [])) or '-'} | -")
    steps = len(v.get("phase2_step_times_s", [])) or v.get("train_steps")
    return (f"{v['peak_rss_gib']:.1f} GiB ({_gib(v.get('peak_rss_phase1_bytes'))}) | "
            f"{v['phase1_s_per_trajectory']:.1f} ({v['teacher_steps']} teacher steps) | "
            f"{v['phase2_s_per_step']:.1f}{'' if steps and steps > 1 else ' (one step)'} | "
            f"{v['estimates']['phase2_hours_default_recipe']:.0f}")


def _measured_row(family: str, name: str, measured: Optional[Dict]):
    """The GPU measurement of a family's memory option, its GPU's name and key, or Nones."""
    rec = (measured or {}).get("families", {}).get(family)
    if not rec or name not in rec.get("options", {}):
        return None, None, None
    gpu = measured["device"]["name"]
    key = gpu_key(gpu)
    return rec, gpu, SAME_PEAKS.get(key, key)


def _gpu_cells(family: str, name: str, counts: Optional[Dict], measured: Optional[Dict]) -> str:
    if counts is None:
        return f"{NOT_MEASURED} | {NOT_MEASURED}"
    est = counts["estimates"][name]
    hours = " / ".join(f"{est[g]['total_hours']:.2f}" for g in GPUS)
    memory = est[next(iter(GPUS))]["phase2_memory_gib"]
    small = [GPUS[g]["name"] for g in GPUS if not est[g]["fits"]]
    mem = f"{memory:.1f} GiB" + (f" (over the {', '.join(small)}'s memory)" if small else "")
    rec, gpu, key = _measured_row(family, name, measured)
    if rec is None:
        return f"{hours} | {mem}"
    row = rec["options"][name]
    if row.get("status") != "measured":
        return f"{hours}; measured on {gpu}: {row['status']} | {mem}; measured on {gpu}: {row['status']}"
    got = measured_hours(rec["teacher"]["s_per_teacher_step_per_trajectory"], row["s_per_step"], counts)["total_hours"]
    mine = est.get(key, {}).get("total_hours") if key else None
    ratio = f", measured / estimated {got / mine:.2f}" if mine else ""
    hours = f"**measured on {gpu}: {got:.2f}**" + (f" (estimated {mine:.2f}{ratio})" if mine else "") + \
        f"; estimated {hours}"
    peak = row.get("peak_memory_gib")
    if peak:
        mem = f"**measured on {gpu}: {peak:.1f} GiB** (estimated {memory:.1f}, measured / estimated {peak / memory:.2f})"
    return f"{hours} | {mem}"


def _tflop(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _counts_line(counts: Dict, command: str) -> str:
    step, gc = counts["phase2_step_tflop"]["no_gc"], counts["phase2_step_tflop"]["gc"]
    h100, gc_h100 = counts["estimates"]["bf16"][next(iter(GPUS))], counts["estimates"]["bf16-gc"][next(iter(GPUS))]
    return (f"Counted on the meta device (`{command}`), TFLOP: denoiser forward {_tflop(counts['forward_tflop_batch1'])} "
            f"at batch 1; teacher step {_tflop(counts['teacher_step_tflop'])} "
            f"{'with guidance' if counts['teacher_cfg'] != 1 else 'without CFG (one pass)'} "
            f"(x {counts['teacher_steps']} per trajectory); phase-2 step at batch {counts['batch_size']} "
            f"{_tflop(step['total'])} (forward {_tflop(step['forward'])}, backward {_tflop(step['backward'])}), "
            f"{_tflop(gc['total'])} with gradient checkpointing (its recomputed forward adds "
            f"{_tflop(gc['backward'] - step['backward'])}). Estimated on an {GPUS[next(iter(GPUS))]['name']} in bf16: "
            f"{h100['phase1_s_per_trajectory']:.2f} s per trajectory, {h100['phase2_s_per_step']:.2f} s per step "
            f"({gc_h100['phase2_s_per_step']:.2f} with checkpointing).")


def _measured_line(family: str, measured: Optional[Dict], counts: Optional[Dict]) -> List[str]:
    rec = (measured or {}).get("families", {}).get(family)
    if not rec:
        return []
    gpu, teacher = measured["device"]["name"], rec["teacher"]
    key = SAME_PEAKS.get(gpu_key(gpu), gpu_key(gpu))
    est = counts["estimates"] if counts and key else None

    def beside(got: float, option: str, what: str, per: int = 1) -> str:
        if est is None or option not in est:
            return ""
        mine = est[option][key][what] / per
        return f" (estimated {mine:.3f}, measured / estimated {got / mine:.2f})"

    s_teacher = teacher["s_per_teacher_step_per_trajectory"]
    line = (f"Measured on {gpu} (`{measured['command']}`): {s_teacher:.3f} s per teacher step per trajectory"
            f"{beside(s_teacher, 'bf16', 'phase1_s_per_trajectory', counts['teacher_steps'] if counts else 1)}, "
            f"{teacher['trajectories']} trajectories at once in bf16; phase 2 at batch "
            f"{next(iter(rec['options'].values()))['batch_size']}: ")
    steps = [f"`{k}` {v['s_per_step']:.3f} s/step{beside(v['s_per_step'], k, 'phase2_s_per_step')}"
             if v["status"] == "measured" else f"`{k}` {v['status']}" for k, v in rec["options"].items()]
    return [line + ", ".join(steps) + "."]


def _family(family: str, rec: Dict, counts: Optional[Dict], counted_command: str, measured: Optional[Dict]) -> List[str]:
    lora, km = rec.get("lora", {}), rec.get("key_match", {})
    match = ", ".join(f"{k} {v['matched']}/{v['total']}" for k, v in km.items() if isinstance(v, dict) and "matched" in v)
    gpus = " / ".join(GPUS)
    batch = counts["batch_size"] if counts else "-"
    own = rec.get("recipe") or {}
    recipe = (f"; the family's recipe: teacher {own['teacher_solver']}, {own['teacher_steps']} steps, cfg "
              f"{own['teacher_cfg']:g}" if {"teacher_solver", "teacher_steps", "teacher_cfg"} <= set(own) else "")
    lines = [f"**{REGISTRY[family].label}** ({rec['architecture']}, {rec['resolution']} px; denoiser "
             f"{rec.get('denoiser_params', 0) / 1e6:.0f} M parameters{recipe}; LoRA rank {lora.get('rank', '-')}: "
             f"{lora.get('params', 0) / 1e6:.1f} M parameters, {lora.get('file_mib', '-')} MiB in "
             f"{lora.get('file_precision', '-')}; keys matched: {match or 'not checked'})", "",
             "| memory option | peak RSS, CPU (phase 1) | s/trajectory, phase 1 | s/step, phase 2 (batch 1) | "
             f"est. hours, phase 2 of the default recipe (CPU) | GPU hours, default recipe, {gpus} ({ESTIMATED}) | "
             f"GPU memory, phase-2 step at batch {batch} ({COUNTED}) |", "|---|---|---|---|---|---|---|"]
    variants = rec.get("variants", {})
    names = sorted(set(variants) | set(counts["estimates"] if counts else ()), key=_order)
    commands: List[str] = []
    points: List[str] = []
    for name in names:
        v = variants.get(name)
        if v and v.get("command") and v["command"] not in commands:
            commands.append(v["command"])
        if v and v.get("measured"):
            what = "extrapolated from" if v["status"] == EXTRAPOLATED else "before it stopped,"
            points.append(f"`{name}` {what} its runs with fewer blocks (measured): " + "; ".join(measured_points(v)) + ".")
        lines.append(f"| `{name}` | {_cpu_cells(v)} | {_gpu_cells(family, name, counts, measured)} |")
    if km.get("command") and km["command"] not in commands:
        commands.append(km["command"])
    lines += [""] + [f"`{c}`  " for c in commands[:-1]] + [f"`{c}`" for c in commands[-1:]] + [""]
    for point in points:
        lines += [point, ""]
    if counts:
        lines += [_counts_line(counts, counted_command), ""]
    measured_lines = _measured_line(family, measured, counts)
    return lines + (measured_lines + [""] if measured_lines else [])


def assumptions(counted: Dict) -> List[str]:
    """What the GPU columns assume, from the counted results file."""
    a = counted["assumptions"]
    peaks = "; ".join(f"{g['name']} {g['bf16_tflops']:g} bf16 / {g['fp32_tflops']:g} fp32, {g['memory_gb']} GB "
                      f"({g['source']})" for g in counted["gpus"].values())
    evidence = "; ".join(f"{REGISTRY[e['family']].label} on an {e['gpu']} {e['implied_mfu']:.2f} ({e['source']})"
                         for e in counted.get("mfu_evidence", []))
    return [f"GPU columns, {counted['label']} (`{counted['command']}`):", "",
            f"* hours = counted FLOPs / (dense peak x MFU {a['mfu']:.2f}): phase 1 for {a['prompts']} trajectories "
            f"({a['prompts_basis']}), plus phase 2 for the recipe's steps at its batch;",
            "* memory = the frozen denoiser in the base dtype, the LoRA's fp32 weights, gradients and optimizer state, "
            "and the activations a step saves for its backward, counted on the meta device (not included: the VAE, "
            "the CUDA context, the allocator's slack);",
            f"* peaks in TFLOPS ({a['peaks']}): {peaks};",
            f"* MFU {a['mfu']:.2f} is {a['mfu_basis']} Implied: {evidence or 'none at this resolution'}.", ""]


def table(results: Dict, counted: Optional[Dict] = None, measured: Optional[Dict] = None) -> str:
    """Markdown tables, one per family, of the CPU results file, with the counted file's GPU
    estimates and the GPU results file's measurements where given."""
    lines: List[str] = []
    counted_families = (counted or {}).get("families", {})
    for family in FAMILIES:
        rec = results.get(family)
        if rec:
            lines += _family(family, rec, counted_families.get(family), (counted or {}).get("command", ""), measured)
    if counted:
        lines += assumptions(counted)
    return "\n".join(lines)
