"""One ComfyUI server for every test under ``tests/comfyui`` (session fixtures).

``base_dir``: ComfyUI's ``--base-directory`` with the tiny SD1.5 checkpoint, the test LoRAs of
``comfy_env.write_loras``, a LoRA trained from that checkpoint by ``training.distill``, empty stand-ins
for the SDXL and PixArt files, an input image, and this project linked as ``custom_nodes/rayflow``.
``server``: ComfyUI on the CPU at 127.0.0.1 on a free port, serving that folder; its log is
``base_dir/server.log``, its process id ``base_dir/server.pid``.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    import comfy_env
    from tiny_checkpoint import write_checkpoint

    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("models/checkpoints", "models/loras", "custom_nodes", "output", "input", "temp", "user"):
        os.makedirs(base / sub, exist_ok=True)
    ckpt = write_checkpoint(str(base / "models/checkpoints/sd15-base.safetensors"))
    model = comfy_env.comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
    comfy_env.write_loras(model, str(base / "models/loras"))
    comfy_env.write_trained_lora(ckpt, str(base / "models/loras"), str(tmp_path_factory.mktemp("trained")))
    comfy_env.write_stand_ins(str(base / "models"))
    os.symlink(comfy_env.REPO, base / "custom_nodes" / comfy_env.PACK)
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 80, 40)).save(base / "input" / "example.png")
    return base


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(base_dir):
    import comfy_env

    port = _free_port()
    log = open(base_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base_dir), "--disable-auto-launch"],
                            cwd=comfy_env.COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT)
    (base_dir / "server.pid").write_text(str(proc.pid))        # for the load test's RSS figures
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(url + "/object_info/RayFlowSampler", timeout=2)
            break
        except Exception:
            if proc.poll() is not None or time.time() - t0 > 240:
                proc.kill()
                pytest.fail("ComfyUI did not start:\n" + (base_dir / "server.log").read_text()[-3000:])
            time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
