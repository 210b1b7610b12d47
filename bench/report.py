"""The multi-seed summary as Markdown tables and plots (``<results stem>.md`` and ``*.png``)."""

from __future__ import annotations

import os
from typing import Dict, List

from rayflow.atomic_write import write_json, write_text

from .evaluation import HEADLINE, STEPS
from .summary import PAIRED_BASELINES

def fmt(stat: Dict, digits: int = 1) -> str:
    if stat is None or stat.get("mean") is None:
        return ""
    if stat.get("ci95") is None:
        return f"{stat['mean']:.{digits}f} (n={stat['n']})"
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def _steps_header(first: str) -> List[str]:
    return [f"| {first} | NFE / image | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in STEPS) + " |",
            "|---|---|" + "---|" * len(STEPS)]


def _nfe(cells: Dict) -> str:
    """The model evaluations per image at each step count, as ``1 / 2 / 4 / 8``: ``cells`` maps step
    counts to a row's metrics (with ``nfe``) or straight to the NFE."""
    per_n = [cells.get(str(n)) for n in STEPS]
    return " / ".join("" if v is None else str(int(v.get("nfe", 0) if isinstance(v, dict) else v)) for v in per_n)


def fair_report(data: Dict) -> List[str]:
    """The fair benchmark's tables: the headline metric (FD to an independent-noise teacher set) per
    method with its NFE, the Holm-adjusted headline family, the further metrics, the held-out
    learning-rate selection."""
    lines = [f"Training seeds {data['train_seeds']}, {data['train_steps']} steps; cells: mean ± 95 % CI half-width "
             f"over training seeds (n = seeds measured). Headline: {HEADLINE}, FD to the teacher's samples from "
             f"independent noise (floor: the teacher against itself, "
             f"{data['teacher']['teacher floor']['25'][HEADLINE]:.1f}).", ""] + _steps_header("method")
    for name, cells in data["teacher"].items():
        if name == "teacher floor":
            continue
        extra = [f"{n} steps: {cells[n][HEADLINE]:.1f} ({int(cells[n]['nfe'])} NFE)" for n in ("6", "25") if n in cells]
        lines.append(f"| {name} | {_nfe(cells)} | " + " | ".join(
            f"{cells[str(n)][HEADLINE]:.1f}" if str(n) in cells else "" for n in STEPS) +
            (f" ({'; '.join(extra)})" if extra else "") + " |")
    for name, v in data["variants"].items():
        if HEADLINE in v:
            lines.append(f"| {name} | {_nfe(v.get('nfe', {}))} | " + " | ".join(fmt(v[HEADLINE].get(str(n))) for n in STEPS) + " |")
    family = data.get("headline")
    if family:
        arm = family.get("arm_row", family["arm"])
        lines += ["", f"Headline family ({family['family_size']} comparisons; every arm at the learning rate and eta "
                  f"chosen on the held-out set): `{arm}` − baseline on {HEADLINE}, paired over seeds (mean ± 95 % CI), "
                  f"paired t-test p, Holm-adjusted p, verdict for `{arm}`:", "",
                  "| baseline | steps | difference | p | Holm p | verdict |", "|---|---|---|---|---|---|"]
        for r in family["comparisons"]:
            lines.append(f"| {r.get('baseline_row', r['baseline'])} | {r['steps']} | {fmt(r)} | "
                         f"{'' if r['p'] is None else format(r['p'], '.3g')} | "
                         f"{'' if r['p_holm'] is None else format(r['p_holm'], '.3g')} | {r['verdict']} |")
    lines += ["", "Further metrics (same-noise FD to the teacher / RMSE to the same-noise teacher sample / FD to data / "
              "alignment):", ""] + _steps_header("method")
    for name, v in data["variants"].items():
        if HEADLINE in v:
            lines.append(f"| {name} | {_nfe(v.get('nfe', {}))} | " + " | ".join(
                " / ".join(fmt(v.get(m, {}).get(str(n)), 3 if m == "rmse" else 2 if m == "alignment" else 1)
                           for m in ("fd", "rmse", "fd_data", "alignment")) for n in STEPS) + " |")
    for key, what in (("lr_selection", "Learning rates (LCM: and losses)"), ("eta_selection", "The sampler's eta (equal cost)")):
        if data.get(key):
            lines += ["", f"{what} chosen on the held-out set (mean over 1/2/4/8 steps of the held-out "
                      f"{HEADLINE}, over the seeds every setting has):", "", "| arm | setting: score | chosen |", "|---|---|---|"]
            for arm, sel in data[key].items():
                lines.append(f"| {arm} | " + "; ".join(f"{v}: {x:.1f}" for v, x in sel["score"].items()) + f" | {sel['chosen']} |")
    return lines


def report(data: Dict) -> str:
    """Markdown tables: the headline (mean ± 95 % CI half-width), then paired differences to ray."""
    if "curves_indep" in data:                       # the fair benchmark: its tables first
        return "\n".join(fair_report(data)) + "\n\n" + _earlier_report(data)
    return _earlier_report(data)


def _earlier_report(data: Dict) -> str:
    lines = [f"Training seeds {data['train_seeds']}, {data['train_steps']} steps; cells: mean ± 95 % CI half-width "
             f"over training seeds (n = seeds measured). FD to the teacher's samples / alignment.", "",
             "| method | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in STEPS) + " |",
             "|---|" + "---|" * len(STEPS)]
    for name, cells in data["teacher"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{cells[str(n)]['fd']:.1f} / {cells[str(n)]['alignment']:.2f}" if str(n) in cells else "" for n in STEPS) +
            (f" (25 steps: {cells['25']['fd']:.1f} / {cells['25']['alignment']:.2f})" if "25" in cells else "") + " |")
    for name, v in data["variants"].items():
        lines.append(f"| RayFlow {name} | " if name != "lcm" else "| LCM-LoRA | ")
        lines[-1] += " | ".join(f"{fmt(v['fd'].get(str(n)))} / {fmt(v['alignment'].get(str(n)), 2)}"
                                if str(n) in v["fd"] else "" for n in STEPS) + " |"
    for base in ("ray", *PAIRED_BASELINES):
        key = f"paired_vs_{base}"
        if not any(key in v for v in data["variants"].values()):
            continue
        lines += ["", f"Paired difference to `{base}` (variant − {base}, mean ± 95 % CI; verdict for the variant):", "",
                  "| variant | metric | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in STEPS) + " |",
                  "|---|---|" + "---|" * len(STEPS)]
        for name, v in data["variants"].items():
            for m, by_n in v.get(key, {}).items():
                if m in ("fd", "fd_data", "alignment"):
                    lines.append(f"| {name} | {m} | " + " | ".join(
                        f"{fmt(by_n[str(n)], 2 if m == 'alignment' else 1)} ({by_n[str(n)]['verdict']})" if str(n) in by_n else ""
                        for n in STEPS) + " |")
    if data["curves"]:
        lines += ["", "FD to the teacher vs training steps (mean over seeds; 1 / 2 / 4 sampling steps):", ""]
        for v, ks in data["curves"].items():
            lines.append(f"- {v}: " + "; ".join(f"@{k}: " + " / ".join(fmt(c[n]) for n in ("1", "2", "4") if n in c)
                                                for k, c in sorted(ks.items(), key=lambda kv: int(kv[0]))))
        for v, c in data["convergence_2step_last_quarter"].items():
            lines.append(f"- {v}: 2-step FD change over the last quarter of training {fmt(c, 3)} (relative)")
    return "\n".join(lines) + "\n"


PLOT_ROWS = ("ray", "no_ts", "no_ray", "lcm", "one_step")       # the rows drawn in the FD-vs-sampling-steps plot


def plot(data: Dict, stem: str) -> List[str]:
    """``<stem>_fd_vs_steps.png`` (FD to the teacher vs sampling steps, mean and 95 % CI per variant,
    the teacher's DPM-Solver++ beside them) and, when there are curves, ``<stem>_fd_vs_training_steps.png``
    (2- and 4-step FD vs training steps, mean and 95 % CI band). Returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no plot")
        return []
    paths = []
    if not any(c.get("ci95") for name in PLOT_ROWS for c in data["variants"].get(name, {}).get("fd", {}).values()):
        return paths            # no interval yet (fewer than two seeds): nothing to draw
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in PLOT_ROWS:
        fd = data["variants"].get(name, {}).get("fd")
        if not fd:
            continue
        ns = [n for n in STEPS if str(n) in fd and fd[str(n)].get("ci95")]
        mean = [fd[str(n)]["mean"] for n in ns]
        err = [[m - fd[str(n)]["ci95"][0] for n, m in zip(ns, mean)], [fd[str(n)]["ci95"][1] - m for n, m in zip(ns, mean)]]
        ax.errorbar(ns, mean, yerr=err, marker="o", capsize=3, label="LCM-LoRA" if name == "lcm" else f"RayFlow {name}")
    dpm = data["teacher"].get("teacher DPM-Solver++", {})
    ns = [n for n in STEPS if str(n) in dpm]
    if ns:
        ax.plot(ns, [dpm[str(n)]["fd"] for n in ns], "k--", marker="x", label="teacher DPM-Solver++")
    floor = data["teacher"].get("teacher floor", {}).get("25", {}).get("fd")
    if floor is not None:
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label="teacher floor")
    ax.set(xscale="log", yscale="log", xticks=list(STEPS), xticklabels=[str(n) for n in STEPS], xlabel="sampling steps",
           ylabel="FD-proxy to the teacher", title=f"mean and 95 % CI over training seeds {data['train_seeds']}")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(f"{stem}_fd_vs_steps.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    if data.get("curves"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, n in zip(axes, ("2", "4")):
            for v, ks in data["curves"].items():
                if v not in ("ray", "no_ts"):
                    continue
                xs = sorted(ks, key=int)
                cells = [ks[k][n] for k in xs]
                mean = [c["mean"] for c in cells]
                ax.plot([int(k) for k in xs], mean, marker="o", label={"ray": "Time Sampler", "no_ts": "uniform t"}[v])
                if all(c.get("ci95") for c in cells):
                    ax.fill_between([int(k) for k in xs], [c["ci95"][0] for c in cells], [c["ci95"][1] for c in cells], alpha=0.2)
            ax.set(xlabel="training steps", ylabel=f"{n}-step FD-proxy to the teacher", yscale="log")
            ax.legend(fontsize=7)
        fig.suptitle(f"mean and 95 % CI over training seeds {data['train_seeds']}", fontsize=9)
        fig.tight_layout()
        paths.append(f"{stem}_fd_vs_training_steps.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    diag = data.get("time_sampler_diagnostics", {}).get("ray")
    if diag:            # timestep histogram, learned density and loss profile at four points of training
        steps = sorted(diag, key=int)
        picks = sorted({steps[min(len(steps) - 1, round(q * (len(steps) - 1)))] for q in (0.1, 0.33, 0.66, 1.0)}, key=int)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for ax, key, label in zip(axes, ("t_hist", "density", "profile"),
                                  ("share of drawn timesteps", "proposal mass per bin", "loss profile log sqrt E[l²]")):
            for i, step in enumerate(picks):
                per_seed = diag[step].get(key, {})
                if not per_seed:
                    continue
                bins = len(next(iter(per_seed.values())))
                x = [(b + 0.5) / bins for b in range(bins)]
                colour = plt.cm.viridis(i / max(1, len(picks) - 1))
                for values in per_seed.values():
                    ax.plot(x, values, color=colour, lw=0.5, alpha=0.4)
                ax.plot(x, [sum(v) / len(per_seed) for v in zip(*per_seed.values())], color=colour, lw=1.6,
                        label=f"step {step}")
            if key == "t_hist":
                ax.axhline(1 / 20, color="grey", ls=":", lw=0.8, label="uniform")
            ax.set(xlabel="t / T", ylabel=label)
            ax.legend(fontsize=7)
        fig.suptitle(f"Time Sampler of the ray arm: thin lines per seed, thick the mean over seeds "
                     f"{sorted({s for c in diag.values() for s in c.get('t_hist', {})}, key=int)}", fontsize=9)
        fig.tight_layout()
        paths.append(f"{stem}_time_sampler.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_report(data: Dict, results: str) -> None:
    """``results`` (the JSON), the markdown report and the plots beside it."""
    write_json(results, data)
    stem = os.path.splitext(results)[0]
    write_text(stem + ".md", report(data))
    plot(data, stem)
