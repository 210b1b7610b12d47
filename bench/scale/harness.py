"""The CPU benchmark of one family, run from the parent process: build, one run per memory
option, the key match; each in its own subprocess under the watchdog.

:func:`bench_family` builds the family's model once in a temporary folder (with ``--blocks``, once
per depth), runs every requested memory option on it (a run whose frozen weights alone pass the
memory limit, or whose optimizer or quantization needs bitsandbytes where it is not installed, is
recorded as not run, with why; with ``--blocks`` the two depths' runs are extrapolated to the full
depth by ``depth``), exports or reuses a LoRA for the key match in diffusers and ComfyUI (always of
the full-size model's keys), and writes the results file after every step, so an interrupted
benchmark keeps what it measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict

from rayflow.atomic_write import write_json

from .depth import extrapolate
from .families import REGISTRY, REPO, denoiser, meta_params
from .recipe import BYTES, COMPUTE, GIB, MEMORY_OPTIONS, TINY_RESOLUTION, compute_precision, default
from .watchdog import run_child


def find_comfyui(given: str) -> str:
    """A ComfyUI source folder: ``given``, ``$COMFYUI_PATH`` or ``../shared/comfyui`` beside the repository."""
    for cand in (given, os.environ.get("COMFYUI_PATH", ""), os.path.join(os.path.dirname(REPO), "shared", "comfyui")):
        if cand and os.path.isfile(os.path.join(cand, "comfy", "lora.py")):
            return cand
    return ""


def comfy_python(given: str) -> str:
    """The Python that runs ComfyUI: ``given``, ``.venv-comfyui/bin/python`` when present, else this one."""
    if given:
        return given
    venv = os.path.join(REPO, ".venv-comfyui", "bin", "python")
    return venv if os.path.isfile(venv) else sys.executable


def write_results(out: str, results: Dict) -> None:
    """Write the results file ``out`` (atomically; its folder made when missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json(out, results)


def bench_family(family: str, args, results: Dict, out: str) -> Dict:
    """Measure ``family`` with the options of ``args`` (``python -m bench.scale``'s), updating its
    record in ``results`` (the variants of earlier runs not rerun now are kept) and writing
    ``results`` to ``out`` after every step; returns the family's record. With ``args.blocks`` (two
    depths) each memory option runs at both depths and its row is extrapolated to the full depth."""
    fam = REGISTRY[family]
    max_rss, env = args.max_rss_gib * GIB, dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                                               MKL_NUM_THREADS=str(args.threads))
    old = results.get(family) if isinstance(results.get(family), dict) else {}
    rec: Dict = {**old, "architecture": fam.architecture, "resolution": TINY_RESOLUTION if args.tiny else fam.resolution,
                 "variants": dict(old.get("variants", {}))}      # the variants of earlier runs not rerun now are kept
    if fam.recipe:
        rec["recipe"] = dict(fam.recipe)
    results[family] = rec
    tmp = tempfile.mkdtemp(prefix=f"rayflow-scale-{family}-")
    depths = args.blocks or [None]
    try:
        folders: Dict = {}
        for units in depths:
            folder = os.path.join(tmp, f"model-{units or 'all'}")
            built = run_child(["build", family, folder] + (["--units", str(units)] if units else []) +
                              (["--tiny"] if args.tiny else []), os.path.join(tmp, "build.json"), max_rss, args.timeout,
                              env=env)
            if built.get("status") != "measured":
                rec["status"] = f"not built: {built['status']}"
                write_results(out, results)
                return rec
            folders[units] = folder, built
        _record_build(rec, family, folders, args)
        write_results(out, results)
        lora_path = ""
        if args.keys_first and not args.no_keymatch:
            path, facts, source = _untrained(family, tmp, args, env)
            if path:
                rec["lora"] = rec.get("lora") or _lora_record(facts)
                _key_match(rec, family, path, source, tmp, args, env, results, out)
        for variant in args.variants:
            runs = {}
            for units, (folder, built) in folders.items():
                res = _run(family, variant, folder, built, os.path.join(tmp, f"{variant}-{units or 'all'}"), args, env)
                res.update(row_header(args, MEMORY_OPTIONS[variant]))     # also on a stopped run
                runs[units] = res
                if res["status"] != "measured":
                    break
            rec["variants"][variant] = row = _row(fam, runs, args)
            if row["status"] == "measured" and not args.blocks:       # a LoRA of the full-size model
                lora_path = lora_path or row["lora"]
                rec["lora"] = _lora_record(row)
            row.pop("lora", None)
            write_results(out, results)
        if not args.no_keymatch and not args.keys_first:
            source = "the LoRA of the first measured variant"
            if not lora_path:
                lora_path, facts, source = _untrained(family, tmp, args, env)
                if lora_path and (args.blocks or not rec.get("lora")):
                    rec["lora"] = _lora_record(facts)
            if lora_path:
                _key_match(rec, family, lora_path, source, tmp, args, env, results, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


def _row(fam, runs: Dict, args) -> Dict:
    """A memory option's row from its runs (depth -> result): the one run's, or with ``--blocks`` the
    extrapolation of both depths' runs, or the run that did not finish (with its depth, and the runs
    before it)."""
    units, last = list(runs.items())[-1]
    if not args.blocks:
        return last
    if all(r["status"] == "measured" for r in runs.values()):
        row = extrapolate(runs, fam.units(denoiser(fam.key, tiny=args.tiny).config), fam.options())
        for r in row["measured"].values():
            r.pop("lora", None)
        return {**row, **{k: last[k] for k in ("command", "device", "bitsandbytes") if k in last}}
    done = {str(u): {k: v for k, v in r.items() if k != "lora"} for u, r in runs.items() if r["status"] == "measured"}
    return {**last, "units": units, **({"measured": done} if done else {})}


def _record_build(rec: Dict, family: str, folders: Dict, args) -> None:
    """The family's parameter counts and stand-ins from its build(s); with fewer blocks, the full
    denoiser's parameters counted on the meta device and each build's own."""
    fam = REGISTRY[family]
    units, (_, built) = next(iter(folders.items()))
    params = dict(built["params"])
    rec.update(stand_ins=built["stand_ins"], build_s=built["wall_s"])
    if units:
        params[fam.denoiser] = meta_params(family, args.tiny)
        rec["params_measured"] = {str(u): b["params"] for u, (_, b) in folders.items()}
        rec["stand_ins"] = [s for s in built["stand_ins"] if not s.startswith("the denoiser at full width with")] + [
            f"the denoiser at full width with fewer units of depth ({' and '.join(str(u) for u in folders)} units of "
            f"{fam.units(denoiser(family, tiny=args.tiny).config)}; a unit is " + ", ".join(f"{n} {k}" for k, n in fam.block_unit.items()) +
            "); every figure extrapolated to the full depth, and labelled so"]
    rec.update(params=params, denoiser_params=params[fam.denoiser])


def _run(family: str, variant: str, folder: str, built: Dict, work: str, args, env: Dict) -> Dict:
    """One measured run of ``variant`` on the built ``folder``, or why it was not run."""
    opts, max_rss = MEMORY_OPTIONS[variant], args.max_rss_gib * GIB
    loaded = compute_precision(opts["base_precision"])       # a quantized base is loaded in bf16 first
    base_bytes = sum(built["params"].values()) * BYTES[loaded]
    if base_bytes > max_rss:
        return {"status": f"not run: the frozen base weights alone take {base_bytes / GIB:.1f} GiB in {loaded}"
                          f"{' (as loaded, before quantization)' if loaded != opts['base_precision'] else ''}, more than "
                          f"the {args.max_rss_gib:g} GiB limit (--max-rss-gib)"}
    if (opts["optimizer"] == "adamw8bit" or opts["base_precision"] in COMPUTE) and not _has_bitsandbytes(env):
        return {"status": "not run: bitsandbytes is not installed"}
    os.makedirs(work, exist_ok=True)
    child_args = ["run", family, folder, "--variant", variant, "--work", work, "--steps", str(args.steps),
                  "--teacher-steps", str(args.teacher_steps), "--prompts", str(args.prompts),
                  "--batch-size", str(args.batch_size)] + (["--tiny"] if args.tiny else []) + \
                 (["--grid"] if args.grid else [])
    return run_child(child_args, os.path.join(work, "result.json"), max_rss, args.timeout, env=env)


def _lora_record(res: Dict) -> Dict:
    return {"rank": default("lora_rank"), "params": res["lora_params"], "modules": res["lora_modules"],
            "file_bytes": res["lora_file_bytes"], "file_mib": round(res["lora_file_bytes"] / 2 ** 20, 1),
            "file_precision": res["lora_file_precision"]}


def _untrained(family: str, tmp: str, args, env: Dict):
    """``(path, facts, source)`` of an untrained LoRA with the full-size model's keys, or ``("", {}, why)``."""
    path = os.path.join(tmp, "untrained.safetensors")
    res = run_child(["lora", family, "--lora", path] + (["--tiny"] if args.tiny else []),
                    os.path.join(tmp, "lora.json"), args.max_rss_gib * GIB, args.timeout, env=env)
    if res.get("status") != "measured":
        return "", {}, res["status"]
    return path, res, ("an untrained LoRA with the family's targets (training.trainer.add_lora on the full-size denoiser "
                       "built on the meta device, adapters drawn at random, written by training.export: the keys a "
                       "trained file has)")


def _key_match(rec: Dict, family: str, lora: str, source: str, tmp: str, args, env: Dict, results: Dict,
               out: str) -> None:
    rec["key_match"] = {"command": args.command, "lora": source,
                        "diffusers": _keys("diffusers", family, lora, tmp, args, env)}
    write_results(out, results)
    comfy = find_comfyui(args.comfyui)
    if comfy:
        rec["key_match"]["comfyui"] = _keys("comfyui", family, lora, tmp, args, env, comfy)
    else:
        rec["key_match"]["comfyui"] = {"status": "not run: no ComfyUI source (--comfyui DIR or COMFYUI_PATH)"}
    write_results(out, results)


def _has_bitsandbytes(env: Dict) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('bitsandbytes') is None)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO).returncode == 0


def _keys(kind: str, family: str, lora: str, tmp: str, args, env: Dict, comfy: str = "") -> Dict:
    out_json = os.path.join(tmp, f"keys_{kind}.json")
    child = ["keys-" + kind, family, "--lora", lora] + (["--tiny"] if args.tiny else [])
    if kind == "diffusers":
        return run_child(child, out_json, args.max_rss_gib * GIB, args.timeout, env=env)
    copy = os.path.join(tmp, "ComfyUI")            # the source may be read-only: import a copy
    if not os.path.isdir(copy):
        shutil.copytree(comfy, copy, ignore=shutil.ignore_patterns(".git", "custom_nodes", "models", "output", "input"))
    return run_child(child, out_json, args.max_rss_gib * GIB, args.timeout, python=comfy_python(args.comfyui_python),
                     env=dict(env, COMFYUI_PATH=copy), comfyui=copy)


def row_header(args, opts: Dict) -> Dict:
    """What every row of a variant carries, run or not: its memory options, the command, the machine and,
    for the 8-bit optimizer or a quantized base, the bitsandbytes version."""
    row = {"options": dict(opts), "command": args.command, "device": args.device}
    if opts["optimizer"] == "adamw8bit" or opts["base_precision"] in COMPUTE:
        row["bitsandbytes"] = args.bitsandbytes
    return row


def bnb_version() -> str:
    """The installed bitsandbytes version, or that it is not installed (for the 8-bit optimizer's rows)."""
    code = "import bitsandbytes; print(bitsandbytes.__version__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    return f"{r.stdout.strip()} installed (pip install bitsandbytes; not a project dependency)" if r.returncode == 0 \
        else "not installed (pip install bitsandbytes to run the adamw8bit variant)"
