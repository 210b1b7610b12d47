"""The README's "Hardware and cost" tables, rendered from a results file.

One table per family, the memory options in ``MEMORY_OPTIONS`` order, and under each table the
commands that measured its rows. ``tests/test_bench_scale.py`` checks that README carries this text
for the committed results, so every figure there is the file's, next to the command that made it.
"""

from __future__ import annotations

from typing import Dict, List

from .families import FAMILIES, REGISTRY
from .recipe import GIB, MEMORY_OPTIONS


def _gib(n) -> str:
    return f"{n / GIB:.1f}" if n else "-"


def _order(name: str) -> int:
    return list(MEMORY_OPTIONS).index(name) if name in MEMORY_OPTIONS else len(MEMORY_OPTIONS)


def _row(name: str, v: Dict) -> str:
    if v.get("status") != "measured":
        reached = f"; RSS reached {v['watchdog_peak_rss_gib']:.1f} GiB" if v.get("watchdog_peak_rss_gib") else ""
        p1 = v.get("phase1_s_per_trajectory")
        return (f"| `{name}` | {v.get('status', '-')}{reached} | {f'{p1:.1f}' if p1 else '-'} | "
                f"{', '.join(f'{t:.0f}' for t in v.get('step_times_s', [])) or '-'} | - | not measured on a GPU |")
    steps = len(v.get("phase2_step_times_s", [])) or v.get("train_steps")
    return (f"| `{name}` | {v['peak_rss_gib']:.1f} GiB ({_gib(v.get('peak_rss_phase1_bytes'))}) | "
            f"{v['phase1_s_per_trajectory']:.1f} ({v['teacher_steps']} teacher steps) | "
            f"{v['phase2_s_per_step']:.1f}{'' if steps and steps > 1 else ' (one step)'} | "
            f"{v['estimates']['phase2_hours_default_recipe']:.0f} | not measured on a GPU |")


def table(results: Dict) -> str:
    """Markdown tables, one per family, of a results file."""
    lines = []
    for family in FAMILIES:
        rec = results.get(family)
        if not rec:
            continue
        lora, km = rec.get("lora", {}), rec.get("key_match", {})
        match = ", ".join(f"{k} {v['matched']}/{v['total']}" for k, v in km.items() if isinstance(v, dict) and "matched" in v)
        lines += [f"**{REGISTRY[family].label}** ({rec['architecture']}, {rec['resolution']} px; denoiser "
                  f"{rec.get('denoiser_params', 0) / 1e6:.0f} M parameters; LoRA rank {lora.get('rank', '-')}: "
                  f"{lora.get('params', 0) / 1e6:.1f} M parameters, {lora.get('file_mib', '-')} MiB in "
                  f"{lora.get('file_precision', '-')}; keys matched: {match or 'not checked'})", "",
                  "| memory option | peak RSS, CPU (phase 1) | s/trajectory, phase 1 | s/step, phase 2 (batch 1) | "
                  "est. hours, phase 2 of the default recipe (CPU) | GPU |", "|---|---|---|---|---|---|"]
        variants = rec.get("variants", {})
        commands: List[str] = []
        for name in sorted(variants, key=_order):
            v = variants[name]
            if v.get("command") and v["command"] not in commands:
                commands.append(v["command"])
            lines.append(_row(name, v))
        km_cmd = km.get("command")
        if km_cmd and km_cmd not in commands:
            commands.append(km_cmd)
        lines += [""] + [f"`{c}`  " for c in commands[:-1]] + [f"`{c}`" for c in commands[-1:]] + [""]
    return "\n".join(lines)
