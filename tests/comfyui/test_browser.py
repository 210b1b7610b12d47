"""The shipped UI workflows in the real ComfyUI web frontend, driven by headless Chromium (playwright).

One ComfyUI server (the fixtures of test_comfyui_integration.py: ``--cpu``, a tiny SD1.5 checkpoint,
test LoRAs) and one browser page serve the whole module. Every ``workflows/*.json`` is loaded with
``app.loadGraphData``: every node type must be registered, no dialog (missing nodes) may open, the page
logs no console error, and every RayFlow node's widgets hold the JSON's ``widgets_values`` under the
input names of the API-format twin in ``workflows/api/``. An SD1.5 workflow retargeted to the tiny
files is queued from the page and must write a finite, non-constant PNG; a RayFlow LoRA Loader pointed
at a corrupt file or at a LoRA of another family must show our one-sentence message in the page, and
the next queued workflow must still succeed.

Screenshots go to a temporary folder; a failing test prints where. Needs playwright (in the venv that
scripts/test_comfyui.sh builds) and a Chromium on PATH (Debian: ``apt-get install chromium``).
"""

import contextlib
import copy
import glob
import json
import os
import shutil
import tempfile
import time
import uuid

import pytest

from test_comfyui_integration import REPO, _post, base_dir, server  # noqa: F401  (the fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium): the browser test needs one",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

UI_WORKFLOWS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "workflows", "*.json")))
SHOTS = tempfile.mkdtemp(prefix="rayflow-browser-shots-")
# console errors that say nothing about the workflows, each with its reason; matched as substrings
BENIGN_CONSOLE_ERRORS = {
    "/user.css]": "the optional user stylesheet; a fresh user folder has none",
    "/favicon.ico]": "ComfyUI serves no favicon",
    "/api/userdata?dir=": "a fresh user folder has no saved workflows or subgraphs",
    "/api/userdata/comfy.templates.json]": "a fresh user folder has no saved templates",
    "https://api.comfy.org/": "the frontend's release check; the test runs offline",
    "at Proxy.addSetting": "frontend 1.27.10 at startup: the onChange of Comfy.Canvas.NavigationMode sets a "
                           "setting that is not registered yet (TypeError reading 'id')",
}


def _load_ui(name):
    with open(os.path.join(REPO, "workflows", name)) as f:
        return json.load(f)


def _load_api(name):
    with open(os.path.join(REPO, "workflows", "api", name)) as f:
        return json.load(f)


class Page:
    """The frontend page and what it logged."""

    def __init__(self, page):
        self.page = page
        self.errors = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"{m.text} [{m.location.get('url')}]"))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e} {e.stack}"))

    def console_errors(self):
        return [e for e in self.errors if not any(b in e for b in BENIGN_CONSOLE_ERRORS)]

    def js(self, script, arg=None):
        return self.page.evaluate(script, arg)

    @contextlib.contextmanager
    def screenshot_on_failure(self, name):
        try:
            yield
        except BaseException:
            path = os.path.join(SHOTS, f"FAILED-{name}.png")
            with contextlib.suppress(Exception):
                self.page.screenshot(path=path)
            print(f"browser test failed in {name}: screenshots in {SHOTS} (this one: {path})")
            raise

    def load(self, workflow, name):
        self.js("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }", [workflow, name])
        self.page.wait_for_timeout(300)

    def close_dialogs(self):
        for _ in range(3):
            if not self.page.locator(".p-dialog").count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)


@pytest.fixture(scope="module")
def ui(server):
    # no first-run tutorial; no missing-models dialog (the SDXL/PixArt workflows name files the server lacks)
    _post(server + "/settings", {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False})
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        p = Page(page)
        with p.screenshot_on_failure("startup"):
            page.goto(server)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph"
                                   " && Object.keys(window.LiteGraph.registered_node_types).includes('RayFlowSampler')")
            page.wait_for_timeout(500)
            page.screenshot(path=os.path.join(SHOTS, "startup.png"))
            assert not p.console_errors(), "\n".join(p.console_errors())
        yield p
        browser.close()


READ_GRAPH = """() => window.app.graph._nodes.map(n => ({
    id: n.id, type: n.type, has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map(w => [w.name, w.value]), saved: n.serialize().widgets_values || [],
}))"""


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_every_ui_workflow_loads_with_its_nodes_and_widget_values(ui, name):
    wf, api = _load_ui(name), _load_api(name)
    with ui.screenshot_on_failure(name):
        ui.close_dialogs()
        ui.errors.clear()
        ui.load(wf, name)
        ui.page.screenshot(path=os.path.join(SHOTS, name.replace(".json", ".png")))
        types = sorted({n["type"] for n in wf["nodes"]})
        registered = ui.js("types => types.filter(t => !(t in window.LiteGraph.registered_node_types))", types)
        assert not registered, f"{name}: node types the frontend does not know: {registered}"
        dialogs = ui.page.locator(".p-dialog")
        assert not dialogs.count(), f"{name}: a dialog opened: {dialogs.first.inner_text()[:500]}"
        assert not ui.console_errors(), f"{name}: console errors: {ui.console_errors()}"
        graph = {str(n["id"]): n for n in ui.js(READ_GRAPH)}
        assert sorted(graph) == sorted(str(n["id"]) for n in wf["nodes"])
        # the API-format twin holds the same nodes in the same order (make_workflows.py numbers the UI ones anew)
        graph_nodes = [n for n in wf["nodes"] if n["type"] != "Note"]
        twins = dict(zip((str(n["id"]) for n in graph_nodes), api.values()))
        assert [n["type"] for n in graph_nodes] == [t["class_type"] for t in api.values()], name
        checked = 0
        for node in wf["nodes"]:
            got = graph[str(node["id"])]
            assert got["type"] == node["type"] and not got["has_errors"], (name, node["id"], got)
            if not node["type"].startswith("RayFlow"):
                continue
            # the values as the frontend saves them, in the JSON's order ...
            assert got["saved"] == node["widgets_values"], (name, node["id"], got["saved"], got["widgets"])
            # ... under the input names the API-format twin uses (a renamed input shows here)
            named = {k: v for k, v in got["widgets"] if k != "control_after_generate"}
            want = {k: v for k, v in twins[str(node["id"])]["inputs"].items() if not isinstance(v, list)}
            assert named == want, (name, node["id"], named, want)
            checked += 1
        assert checked, f"{name} holds no RayFlow node"


def _tiny(wf, lora="rayflow-sd15.safetensors"):
    """The UI workflow retargeted to the tiny test files and 64x64 latents, saving under a fresh prefix."""
    wf = copy.deepcopy(wf)
    prefix = "browser_" + uuid.uuid4().hex[:8]
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = "sd15-base.safetensors"
        elif node["type"] == "RayFlowLoraLoader":
            node["widgets_values"][0] = lora
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
        elif node["type"] == "SaveImage":
            node["widgets_values"][0] = prefix
    return wf, prefix


def _queue_and_wait_for_png(ui, base_dir, wf, prefix, name, timeout=300):
    ui.load(wf, name)
    ui.js("async () => { await window.app.queuePrompt(0, 1); }")
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = glob.glob(str(base_dir / "output" / f"{prefix}_*.png"))
        if found:
            break
        ui.page.wait_for_timeout(500)
    else:
        pytest.fail(f"{name}: no {prefix}_*.png in the output folder after {timeout} s")
    import numpy as np
    from PIL import Image

    time.sleep(0.5)                                          # SaveImage may still be writing it
    img = np.asarray(Image.open(found[0]).convert("RGB"), dtype=np.float64)
    assert img.shape == (64, 64, 3) and np.isfinite(img).all() and img.std() > 0, (found[0], img.shape, img.std())
    return found[0]


def test_queued_from_the_page_a_sd15_workflow_writes_a_real_image(ui, base_dir):
    wf, prefix = _tiny(_load_ui("sd15_4step.json"))
    with ui.screenshot_on_failure("queue_sd15_4step"):
        png = _queue_and_wait_for_png(ui, base_dir, wf, prefix, "sd15_4step.json")
        saver = next(n["id"] for n in wf["nodes"] if n["type"] == "SaveImage")
        # ... and the page shows it on the Save Image node
        ui.page.wait_for_function(
            "([id, file]) => { const n = window.app.graph.getNodeById(id);"
            " return !!n && (n.imgs || []).some(i => decodeURIComponent(i.src).includes(file)); }",
            arg=[saver, os.path.basename(png)], timeout=60_000)
        ui.page.screenshot(path=os.path.join(SHOTS, "queue_sd15_4step.png"))


@pytest.mark.parametrize("lora, message", [
    ("rayflow-corrupt.safetensors", "is corrupt or not a safetensors file"),
    ("rayflow-sdxl.safetensors", "is a RayFlow LoRA for SDXL, but the loaded model is SD1.5"),
])
def test_a_bad_lora_shows_our_message_and_the_next_workflow_runs(ui, base_dir, lora, message):
    bad, _ = _tiny(_load_ui("sd15_1step.json"), lora=lora)
    with ui.screenshot_on_failure(f"bad_lora_{lora}"):
        ui.close_dialogs()
        ui.load(bad, "sd15_1step.json")
        ui.js("async () => { await window.app.queuePrompt(0, 1); }")
        shown = ui.page.get_by_text(message).first
        shown.wait_for(state="visible", timeout=120_000)
        dialog = ui.page.locator(".p-dialog").filter(has_text=message)
        assert "RayFlowLoraLoader" in dialog.inner_text(), dialog.inner_text()
        ui.page.screenshot(path=os.path.join(SHOTS, f"bad_lora_{lora}.png"))
        text = shown.inner_text()
        assert lora in text, text
        ui.close_dialogs()
        good, prefix = _tiny(_load_ui("sd15_1step.json"))
        _queue_and_wait_for_png(ui, base_dir, good, prefix, "sd15_1step.json")
