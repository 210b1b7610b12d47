"""Running one measurement in its own subprocess under a watchdog, and describing the machine.

:func:`run_child` starts ``python -m bench.scale.child ...``, samples the child's RSS with psutil
five times a second, and stops it above a memory limit or after a time limit. A stopped or failed
child still reports what it measured: the ``progress.json`` it kept in its work folder says the
phase it was in, the steps it finished and their times.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import psutil
import torch

from .families import REPO
from .recipe import GIB


def run_child(args: List[str], out_json: str, max_rss: float, timeout: float, python: str = sys.executable,
              env: Optional[Dict] = None, comfyui: str = "") -> Dict:
    """Run ``python -m bench.scale.child ARGS`` writing ``out_json``; stop it above ``max_rss``
    bytes of RSS or after ``timeout`` s. Returns its JSON with ``status: measured``, or
    ``{"status": why, ...}`` with what the child's ``progress.json`` recorded."""
    cmd = [python, "-m", "bench.scale.child", *args, "--child-out", out_json]
    if comfyui:
        cmd += ["--comfyui", comfyui]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak, why = psutil.Process(proc.pid), 0, None
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        if peak > max_rss:
            why = f"stopped: RSS passed the {max_rss / GIB:.0f} GiB limit (--max-rss-gib)"
        elif time.time() - t0 > timeout:
            why = f"stopped: did not finish within {timeout:.0f} s (--timeout)"
        if why:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.2)
    reader.join(5)
    wall = time.time() - t0
    if why is None and proc.returncode == 0 and os.path.isfile(out_json):
        with open(out_json, encoding="utf-8") as f:
            res = json.load(f)
        res["status"] = "measured"
        res["wall_s"] = round(wall, 1)
        return res
    progress = os.path.join(os.path.dirname(out_json), "progress.json")
    where = {}
    if os.path.isfile(progress):
        with open(progress, encoding="utf-8") as f:
            where = json.load(f)
    tail = "".join(lines[-3:]).strip().splitlines()
    res = {"status": why or f"failed (exit {proc.returncode}): {tail[-1] if tail else 'no output'}",
           "stopped_in": where.get("phase"), "steps_done": where.get("steps_done", 0),
           "step_times_s": where.get("step_times", []), "watchdog_peak_rss_gib": round(peak / GIB, 2),
           "wall_s": round(wall, 1)}
    if where.get("trajectories"):         # what a stopped run measured before it was stopped
        res["phase1_s_per_trajectory"] = sum(t for t, _ in where["trajectories"]) / sum(n for _, n in where["trajectories"])
    if where.get("rss_phase1_peak"):
        res["peak_rss_phase1_gib"] = round(where["rss_phase1_peak"] / GIB, 2)
    return res


def device_info(threads: int) -> Dict:
    """The machine a run measures on; ``run_threads``: OMP_NUM_THREADS of the measuring subprocesses
    (this process's own torch threads are not theirs)."""
    info = {"kind": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "run_threads": threads}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), info["cpu"])
    except OSError:
        pass
    info["ram_gib"] = round(psutil.virtual_memory().total / GIB, 1)
    info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info["niceness"] = os.nice(0)
    return info
