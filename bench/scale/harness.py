"""The CPU benchmark of one family, run from the parent process: build, one run per memory
option, the key match; each in its own subprocess under the watchdog.

:func:`bench_family` builds the family's model once in a temporary folder, runs every requested
memory option on it (a run whose frozen weights alone pass the memory limit, or whose optimizer is
not installed, is recorded as not run, with why), exports or reuses a LoRA for the key match in
diffusers and ComfyUI, and writes the results file after every step, so an interrupted benchmark
keeps what it measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict

from rayflow.atomic_write import write_json

from .cost import cpu_estimates
from .families import REGISTRY, REPO
from .recipe import BYTES, GIB, MEMORY_OPTIONS, TINY_RESOLUTION, default
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
    ``results`` to ``out`` after every step; returns the family's record."""
    max_rss, env = args.max_rss_gib * GIB, dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                                               MKL_NUM_THREADS=str(args.threads))
    old = results.get(family) if isinstance(results.get(family), dict) else {}
    rec: Dict = {**old, "architecture": REGISTRY[family].architecture,
                 "resolution": TINY_RESOLUTION if args.tiny else REGISTRY[family].resolution,
                 "variants": dict(old.get("variants", {}))}      # the variants of earlier runs not rerun now are kept
    results[family] = rec
    tmp = tempfile.mkdtemp(prefix=f"rayflow-scale-{family}-")
    try:
        model_dir = os.path.join(tmp, "model")
        built = run_child(["build", family, model_dir] + (["--tiny"] if args.tiny else []),
                          os.path.join(tmp, "build.json"), max_rss, args.timeout, env=env)
        if built.get("status") != "measured":
            rec["status"] = f"not built: {built['status']}"
            write_results(out, results)
            return rec
        den = built["params"].get("unet", built["params"].get("transformer"))
        rec.update(params=built["params"], denoiser_params=den, stand_ins=built["stand_ins"],
                   build_s=built["wall_s"])
        enc = sum(v for k, v in built["params"].items() if k.startswith("text_encoder"))
        lora_path = ""
        if args.keys_first and not args.no_keymatch:
            path, facts, source = _untrained(family, model_dir, tmp, args, env)
            if path:
                rec["lora"] = rec.get("lora") or _lora_record(facts)
                _key_match(rec, family, model_dir, path, source, tmp, args, env, results, out)
        for variant in args.variants:
            opts = MEMORY_OPTIONS[variant]
            base_bytes = (den + enc + built["params"].get("vae", 0)) * BYTES[opts["base_precision"]]
            if base_bytes > max_rss:
                rec["variants"][variant] = {**row_header(args, opts), "status": (
                    f"not run: the frozen base weights alone take {base_bytes / GIB:.1f} GiB in "
                    f"{opts['base_precision']}, more than the {args.max_rss_gib:g} GiB limit (--max-rss-gib)")}
                write_results(out, results)
                continue
            if opts["optimizer"] == "adamw8bit" and not _has_bitsandbytes(env):
                rec["variants"][variant] = {**row_header(args, opts),
                                            "status": "not run: bitsandbytes is not installed"}
                write_results(out, results)
                continue
            work = os.path.join(tmp, variant)
            os.makedirs(work, exist_ok=True)
            child_args = ["run", family, model_dir, "--variant", variant, "--work", work, "--steps", str(args.steps),
                          "--teacher-steps", str(args.teacher_steps), "--prompts", str(args.prompts),
                          "--batch-size", str(args.batch_size)] + (["--tiny"] if args.tiny else []) + \
                         (["--grid"] if args.grid else [])
            res = run_child(child_args, os.path.join(work, "result.json"), max_rss, args.timeout, env=env)
            res.update(row_header(args, opts))     # also on a stopped run, whose result has only what it measured
            if res["status"] == "measured":
                res["estimates"] = cpu_estimates(res)
                lora_path = lora_path or res["lora"]
                rec["lora"] = _lora_record(res)
                res.pop("lora")
            rec["variants"][variant] = res
            write_results(out, results)
        if not args.no_keymatch and not args.keys_first:
            source = "the LoRA of the first measured variant"
            if not lora_path:
                lora_path, facts, source = _untrained(family, model_dir, tmp, args, env)
                if lora_path:
                    rec["lora"] = rec.get("lora") or _lora_record(facts)
            if lora_path:
                _key_match(rec, family, model_dir, lora_path, source, tmp, args, env, results, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


def _lora_record(res: Dict) -> Dict:
    return {"rank": default("lora_rank"), "params": res["lora_params"], "modules": res["lora_modules"],
            "file_bytes": res["lora_file_bytes"], "file_mib": round(res["lora_file_bytes"] / 2 ** 20, 1),
            "file_precision": res["lora_file_precision"]}


def _untrained(family: str, model_dir: str, tmp: str, args, env: Dict):
    """``(path, facts, source)`` of an untrained LoRA exported from the full-size model, or
    ``("", {}, why)``."""
    path = os.path.join(tmp, "untrained.safetensors")
    res = run_child(["lora", family, model_dir, "--lora", path] + (["--tiny"] if args.tiny else []),
                    os.path.join(tmp, "lora.json"), args.max_rss_gib * GIB, args.timeout, env=env)
    if res.get("status") != "measured":
        return "", {}, res["status"]
    return path, res, ("an untrained LoRA with the default targets (training.trainer.add_lora on the full-size denoiser "
                       "in bf16, lora_B drawn from N(0, 1e-3), written by training.export: the keys a trained file has)")


def _key_match(rec: Dict, family: str, model_dir: str, lora: str, source: str, tmp: str, args, env: Dict,
               results: Dict, out: str) -> None:
    rec["key_match"] = {"command": args.command, "lora": source,
                        "diffusers": _keys("diffusers", family, model_dir, lora, tmp, args, env)}
    write_results(out, results)
    comfy = find_comfyui(args.comfyui)
    if comfy:
        rec["key_match"]["comfyui"] = _keys("comfyui", family, model_dir, lora, tmp, args, env, comfy)
    else:
        rec["key_match"]["comfyui"] = {"status": "not run: no ComfyUI source (--comfyui DIR or COMFYUI_PATH)"}
    write_results(out, results)


def _has_bitsandbytes(env: Dict) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('bitsandbytes') is None)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO).returncode == 0


def _keys(kind: str, family: str, model_dir: str, lora: str, tmp: str, args, env: Dict, comfy: str = "") -> Dict:
    out_json = os.path.join(tmp, f"keys_{kind}.json")
    child = ["keys-" + kind, family, model_dir, "--lora", lora] + (["--tiny"] if args.tiny else [])
    if kind == "diffusers":
        return run_child(child, out_json, args.max_rss_gib * GIB, args.timeout, env=env)
    copy = os.path.join(tmp, "ComfyUI")            # the source may be read-only: import a copy
    if not os.path.isdir(copy):
        shutil.copytree(comfy, copy, ignore=shutil.ignore_patterns(".git", "custom_nodes", "models", "output", "input"))
    return run_child(child, out_json, args.max_rss_gib * GIB, args.timeout, python=comfy_python(args.comfyui_python),
                     env=dict(env, COMFYUI_PATH=copy), comfyui=copy)


def row_header(args, opts: Dict) -> Dict:
    """What every row of a variant carries, run or not: its memory options, the command, the machine and,
    for the 8-bit optimizer, the bitsandbytes version."""
    row = {"options": dict(opts), "command": args.command, "device": args.device}
    if opts["optimizer"] == "adamw8bit":
        row["bitsandbytes"] = args.bitsandbytes
    return row


def bnb_version() -> str:
    """The installed bitsandbytes version, or that it is not installed (for the 8-bit optimizer's rows)."""
    code = "import bitsandbytes; print(bitsandbytes.__version__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    return f"{r.stdout.strip()} installed (pip install bitsandbytes; not a project dependency)" if r.returncode == 0 \
        else "not installed (pip install bitsandbytes to run the adamw8bit variant)"
