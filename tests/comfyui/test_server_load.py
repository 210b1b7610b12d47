"""The real ComfyUI server under load through the RayFlow nodes (docs/benchmarks.md, "ComfyUI server
under load"): ``LOAD_PROMPTS`` prompts queued at once (16 in the CI suite; the benchmark's 50 with
``RAYFLOW_LOAD_PROMPTS=50``), valid graphs mixed with graphs whose RayFlow LoRA is corrupt, made for
another family or missing (deleted after it was queued), and long graphs cancelled with
``/interrupt`` while they sample. Every valid prompt saves its image, every bad one fails alone in
the LoRA loader with our sentence, every cancelled one ends interrupted, ``/system_stats`` answers
throughout, and the server's RSS after the run stays within ``RSS_BOUND_MB`` of its RSS after a
warm-up round of the same kinds (every valid prompt patches a new model: one left behind per prompt
would pile up)::

    RAYFLOW_LOAD_PROMPTS=50 bash scripts/test_comfyui.sh -q -s -k under_load     # prints the figures
"""

import asyncio
import json
import os
import random
import shutil
import time
import uuid

from comfy_env import TRAINED_LORA, api_workflow, get_json  # noqa: I001  (skips without ComfyUI)

LOAD_PROMPTS = int(os.environ.get("RAYFLOW_LOAD_PROMPTS", "16"))
RSS_BOUND_MB = 100
STATS_EVERY_S = 0.5
# kind -> (share of the prompts, the sentence its failure must hold)
KINDS = {"valid": (0.56, None), "corrupt": (0.1, "is corrupt or not a safetensors file"),
         "family": (0.1, "is a RayFlow LoRA for SDXL, but the loaded model is SD1.5"),
         "missing": (0.12, "not found in models/loras"), "cancel": (0.12, None)}
LORAS = {"corrupt": "rayflow-corrupt.safetensors", "family": "rayflow-sdxl.safetensors"}


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _plan(n, seed=35):
    """``n`` prompt kinds in a seeded order; the first is a long one to cancel, so that the whole batch
    is queued (and the 'missing' files deleted) before the rest runs."""
    kinds = [k for k, (share, _) in KINDS.items() for _ in range(max(1, round(share * n)))]
    kinds = (kinds + ["valid"] * n)[:n - 1]
    random.Random(seed).shuffle(kinds)
    return ["cancel"] + kinds


def _graph(kind, i, loras):
    """The API graph of prompt ``i``: sd15_1step.json at 64 x 64 (128 x 128, 50 steps to cancel),
    each valid one with its own seed and LoRA strength, so that every prompt patches a new model."""
    lora = {"valid": loras[i % 2], "cancel": loras[0], "missing": f"rayflow-gone-{i}.safetensors"}.get(kind, LORAS.get(kind))
    changes = {"2": {"lora_name": lora, "strength": round(0.5 + 0.01 * i, 2)},
               "6": {"seed": 1000 + i, **({"steps": 50} if kind == "cancel" else {})},
               "8": {"filename_prefix": f"load_{i:03d}_{kind}"}}
    if kind == "cancel":
        changes["5"] = {"width": 128, "height": 128}
    return api_workflow("sd15_1step.json", **changes)


async def _run(server, base_dir, plan):
    """Queue ``plan`` at once, cancel the long ones while they sample, poll /system_stats; returns
    ``({prompt_id: (i, kind)}, {prompt_id: end event}, stats latencies, failed stats calls, seconds)``."""
    import aiohttp

    loras_dir = base_dir / "models" / "loras"
    for i, kind in enumerate(plan):
        if kind == "missing":        # listed when queued (so /prompt accepts it), gone when it runs
            shutil.copy(loras_dir / "rayflow-sd15.safetensors", loras_dir / f"rayflow-gone-{i}.safetensors")
    client_id = uuid.uuid4().hex
    ids, ends, latencies, stats_failed = {}, {}, [], []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.replace("http", "ws") + f"/ws?clientId={client_id}") as ws:
            t0 = time.time()
            for i, kind in enumerate(plan):
                body = {"prompt": _graph(kind, i, ["rayflow-sd15.safetensors", TRAINED_LORA]), "client_id": client_id}
                async with session.post(server + "/prompt", json=body) as r:
                    assert r.status == 200, (i, kind, await r.text())
                    ids[(await r.json())["prompt_id"]] = (i, kind)
            for i, kind in enumerate(plan):
                if kind == "missing":
                    os.remove(loras_dir / f"rayflow-gone-{i}.safetensors")

            async def poll_stats():
                while len(ends) < len(plan):
                    t = time.time()
                    try:
                        async with session.get(server + "/system_stats", timeout=aiohttp.ClientTimeout(total=30)) as r:
                            await r.json()
                            (latencies if r.status == 200 else stats_failed).append(time.time() - t)
                    except Exception as exc:  # any failure to answer counts
                        stats_failed.append(repr(exc))
                    await asyncio.sleep(STATS_EVERY_S)

            poller = asyncio.create_task(poll_stats())
            interrupted = set()
            while len(ends) < len(plan):
                msg = await asyncio.wait_for(ws.receive(), timeout=600)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                pid = data.get("data", {}).get("prompt_id")
                if pid not in ids:
                    continue
                if data["type"] == "progress" and ids[pid][1] == "cancel" and data["data"]["value"] >= 2 \
                        and pid not in interrupted:
                    interrupted.add(pid)
                    async with session.post(server + "/interrupt", json={"prompt_id": pid}) as r:
                        assert r.status == 200
                if data["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    ends[pid] = data["type"]
            seconds = time.time() - t0
            await poller
    return ids, ends, latencies, stats_failed, seconds


def _check(server, base_dir, ids, ends):
    """Each prompt ended as its kind must: a saved image, the loader's sentence, or interrupted."""
    for pid, (i, kind) in ids.items():
        hist = get_json(f"{server}/history/{pid}")[pid]
        messages = dict((m[0], m[1]) for m in hist["status"]["messages"])
        if kind == "valid":
            assert ends[pid] == "execution_success", (i, kind, messages)
            images = hist["outputs"]["8"]["images"]
            assert images and all((base_dir / "output" / im["subfolder"] / im["filename"]).is_file() for im in images)
        elif kind == "cancel":
            assert ends[pid] == "execution_interrupted", (i, kind, ends[pid], messages.get("execution_error"))
        else:
            err = messages.get("execution_error")
            assert ends[pid] == "execution_error" and err["node_type"] == "RayFlowLoraLoader", (i, kind, err)
            assert KINDS[kind][1] in err["exception_message"] and "\n" not in err["exception_message"].strip(), err


def test_the_server_under_load_serves_every_valid_prompt_and_fails_each_bad_one_alone(server, base_dir):
    pid_file = base_dir / "server.pid"
    server_pid = int(pid_file.read_text())
    warm = ["cancel", "valid", "valid", "corrupt", "family", "missing", "valid"]       # every kind once, first
    ids, ends, *_ = asyncio.run(_run(server, base_dir, warm))
    _check(server, base_dir, ids, ends)
    rss_before = _rss_mb(server_pid)
    plan = _plan(LOAD_PROMPTS)
    ids, ends, latencies, stats_failed, seconds = asyncio.run(_run(server, base_dir, plan))
    _check(server, base_dir, ids, ends)
    rss_after = _rss_mb(server_pid)
    counts = {k: plan.count(k) for k in KINDS}
    print(f"\nload: {len(plan)} prompts {counts} in {seconds:.1f} s; /system_stats answered {len(latencies)} times "
          f"(max {max(latencies):.2f} s, failed {len(stats_failed)}); server RSS {rss_before:.0f} MB after the warm-up, "
          f"{rss_after:.0f} MB after the run ({rss_after - rss_before:+.0f} MB; bound +{RSS_BOUND_MB} MB)")
    assert not stats_failed and latencies and max(latencies) < 10, (stats_failed, latencies and max(latencies))
    assert rss_after - rss_before < RSS_BOUND_MB, (rss_before, rss_after)
    assert get_json(server + "/queue") == {"queue_running": [], "queue_pending": []}
