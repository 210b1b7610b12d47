"""The shipped UI workflows in the real ComfyUI web frontend, driven by headless Chromium (playwright).

One ComfyUI server (conftest.py: ``--cpu``, a tiny SD1.5 checkpoint, a LoRA ``training.distill`` made
from it, test LoRAs, empty SDXL/PixArt stand-ins) and one browser page serve the whole module.

- Every ``workflows/*.json`` is loaded with ``app.loadGraphData``: every node type registered, no dialog
  (missing nodes), no console error, and every RayFlow node's widgets hold the JSON's
  ``widgets_values`` under the input names of the API-format twin in ``workflows/api/``.
- Every workflow opens from the Templates side bar (Custom Nodes -> rayflow) with its thumbnail.
- Every SD1.5 workflow, retargeted to the tiny files, is run with the Run button and must write a
  finite, non-constant PNG per Save Image node, shown on that node; the SDXL, PixArt, SD3.5 and FLUX.1
  workflows pass ComfyUI's /prompt validation as the page converts them.
- "Cancel current run" during a RayFlow Sampler run stops it; a RayFlow LoRA Loader pointed at a
  corrupt file or at a LoRA of another family shows our one-sentence message in the page, and the next
  workflow still runs.

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

from comfy_env import PACK, REPO, TRAINED_LORA, post_json, wait_for_history  # noqa: I001  (skips without ComfyUI)

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
    post_json(server + "/settings", {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False})
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


SD15_WORKFLOWS = [n for n in UI_WORKFLOWS if n.startswith("sd15_")]


def _tiny(wf, lora=TRAINED_LORA):
    """The UI workflow retargeted to the tiny test files, 64x64 latents and the input image; each Save
    Image node saves under its own fresh prefix. Returns ``(workflow, {save node id: prefix})``."""
    wf = copy.deepcopy(wf)
    run = "browser_" + uuid.uuid4().hex[:8]
    prefixes = {}
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = "sd15-base.safetensors"
        elif node["type"] == "RayFlowLoraLoader":
            node["widgets_values"][0] = lora
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
        elif node["type"] == "LoadImage":
            node["widgets_values"][0] = "example.png"
        elif node["type"] == "SaveImage":
            prefixes[node["id"]] = node["widgets_values"][0] = f"{run}_{node['id']}"
    assert prefixes, "the workflow saves no image"
    return wf, prefixes


def _run_button(ui):
    return ui.page.locator("button[aria-label='Run']").first


def _queue_and_wait_for_pngs(ui, base_dir, wf, prefixes, name, timeout=300):
    """Load ``wf``, press Run, and wait for every Save Image node's file: each a finite, non-constant
    64x64 PNG, shown on its node in the page. Returns the files."""
    import numpy as np
    from PIL import Image

    ui.close_dialogs()
    ui.load(wf, name)
    _run_button(ui).click()
    files = {}
    t0 = time.time()
    while len(files) < len(prefixes):
        for node_id, prefix in prefixes.items():
            found = glob.glob(str(base_dir / "output" / f"{prefix}_*.png"))
            if found:
                files[node_id] = found[0]
        if time.time() - t0 > timeout:
            pytest.fail(f"{name}: no image in the output folder for {sorted(set(prefixes.values()) - set(files))} "
                        f"after {timeout} s")
        ui.page.wait_for_timeout(500)
    time.sleep(0.5)                                          # SaveImage may still be writing them
    for node_id, png in files.items():
        img = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
        assert img.shape == (64, 64, 3) and np.isfinite(img).all() and img.std() > 0, (png, img.shape, img.std())
        ui.page.wait_for_function(                           # ... shown on its Save Image node
            "([id, file]) => { const n = window.app.graph.getNodeById(id);"
            " return !!n && (n.imgs || []).some(i => decodeURIComponent(i.src).includes(file)); }",
            arg=[node_id, os.path.basename(png)], timeout=60_000)
    return files


@pytest.mark.parametrize("name", SD15_WORKFLOWS)
def test_every_sd15_workflow_run_from_the_page_writes_real_images(ui, base_dir, name):
    """With the LoRA ``training.distill`` made from the tiny checkpoint, as a user would run it."""
    wf, prefixes = _tiny(_load_ui(name))
    with ui.screenshot_on_failure(f"queue_{name}"):
        _queue_and_wait_for_pngs(ui, base_dir, wf, prefixes, name)
        ui.page.screenshot(path=os.path.join(SHOTS, f"queue_{name.replace('.json', '.png')}"))


# the loaders of the SDXL, PixArt, SD3.5 and FLUX.1 workflows, which fail on the empty stand-in files after validation
STAND_IN_LOADERS = ("CheckpointLoaderSimple", "UNETLoader", "CLIPLoader", "VAELoader", "TripleCLIPLoader",
                    "DualCLIPLoader")


@pytest.mark.parametrize("name", [n for n in UI_WORKFLOWS if n not in SD15_WORKFLOWS])
def test_sdxl_pixart_sd35_and_flux_workflows_pass_comfyui_validation(ui, server, name):
    """The page turns the graph into a prompt (``app.graphToPrompt``) and ComfyUI's /prompt accepts it:
    node types, input names, links and values all valid for this ComfyUI. The model files are empty
    stand-ins (no SDXL, PixArt, SD3.5 or FLUX model, nor their full-size text encoders, fits a CPU test;
    the SD3 / FLUX nodes run on tiny models in test_flow_models.py), so execution then stops at a loader."""
    with ui.screenshot_on_failure(f"validate_{name}"):
        ui.close_dialogs()
        ui.load(_load_ui(name), name)
        prompt = ui.js("async () => (await window.app.graphToPrompt()).output")
        assert {n["class_type"] for n in prompt.values()} >= {"RayFlowLoraLoader", "RayFlowSampler"}
        queued = post_json(server + "/prompt", {"prompt": prompt, "client_id": "pytest-validation"})
        assert queued.get("node_errors") == {} and queued.get("prompt_id"), queued
        hist = wait_for_history(server, queued["prompt_id"], timeout=120)
        errors = [m[1] for m in hist["status"]["messages"] if m[0] == "execution_error"]
        assert errors and errors[0]["node_type"] in STAND_IN_LOADERS, hist["status"]
        ui.close_dialogs()


TRACK_RUN = """() => {
    window.__rayflow = {progress: [], end: null};
    const api = window.app.api, log = window.__rayflow;
    api.addEventListener("progress", e => log.progress.push(e.detail.value));
    for (const t of ["execution_interrupted", "execution_success", "execution_error"])
        api.addEventListener(t, () => { log.end = log.end || t; });
}"""


def test_cancel_during_a_rayflow_sampler_run_stops_it(ui, base_dir):
    """Run a 50-step RayFlow Sampler at 128x128 and press "Cancel current run" after two steps: the run
    ends as interrupted within a step or two and saves no image."""
    wf, prefixes = _tiny(_load_ui("sd15_4step.json"))
    with ui.screenshot_on_failure("cancel"):
        ui.close_dialogs()
        ui.load(wf, "sd15_4step.json")
        ui.js("""() => { for (const n of window.app.graph._nodes) {
            if (n.type === "RayFlowSampler") n.widgets.find(w => w.name === "steps").value = 50;
            if (n.type === "EmptyLatentImage") for (const k of ["width", "height"]) n.widgets.find(w => w.name === k).value = 128;
        } }""")
        ui.js(TRACK_RUN)
        _run_button(ui).click()
        ui.page.wait_for_function("() => window.__rayflow.progress.some(v => v >= 2)", timeout=300_000)
        pressed_at = max(ui.js("() => window.__rayflow.progress"))
        cancel = ui.page.locator("button[aria-label='Cancel current run']")
        cancel.click()
        ui.page.wait_for_function("() => window.__rayflow.end !== null", timeout=120_000)
        log = ui.js("() => window.__rayflow")
        assert log["end"] == "execution_interrupted", log
        assert max(log["progress"]) <= pressed_at + 2 < 50, (pressed_at, log["progress"])
        assert not glob.glob(str(base_dir / "output" / f"{next(iter(prefixes.values()))}_*.png"))


def _open_templates(ui):
    ui.close_dialogs()
    ui.page.locator("button.templates-tab-button").click()
    ui.page.locator(f".p-dialog [role=option][aria-label='{PACK}']").click()


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_every_workflow_opens_from_the_templates_menu_with_its_thumbnail(ui, name):
    """Templates (side bar) -> Custom Nodes -> rayflow lists every UI workflow with its same-name .jpg
    as thumbnail; clicking the card loads the workflow as the JSON holds it."""
    stem, wf = name[: -len(".json")], _load_ui(name)
    with ui.screenshot_on_failure(f"template_{name}"):
        _open_templates(ui)
        cards = ui.page.locator(".p-dialog [data-testid^='template-workflow-']")
        listed = sorted(c.get_attribute("data-testid")[len("template-workflow-"):] for c in cards.all())
        assert listed == sorted(n[: -len(".json")] for n in UI_WORKFLOWS)
        card = ui.page.locator(f".p-dialog [data-testid='template-workflow-{stem}']")
        card.scroll_into_view_if_needed()
        img = card.locator("img").first
        ui.page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)
        from PIL import Image

        with Image.open(os.path.join(REPO, "workflows", stem + ".jpg")) as thumb:
            assert img.evaluate("e => [e.naturalWidth, e.naturalHeight]") == list(thumb.size)
        ui.errors.clear()
        card.click()
        ui.page.wait_for_function("types => !document.querySelector('.p-dialog') && JSON.stringify("
                                  "window.app.graph._nodes.map(n => n.type).sort()) === JSON.stringify(types)",
                                  arg=sorted(n["type"] for n in wf["nodes"]), timeout=30_000)
        graph = ui.js(READ_GRAPH)
        assert sorted(n["type"] for n in graph) == sorted(n["type"] for n in wf["nodes"]), name
        by_id = {str(n["id"]): n for n in graph}
        for node in wf["nodes"]:
            if node["type"].startswith("RayFlow"):
                assert by_id[str(node["id"])]["saved"] == node["widgets_values"], (name, node["id"])
        assert not ui.console_errors(), f"{name}: console errors: {ui.console_errors()}"


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
        good, prefixes = _tiny(_load_ui("sd15_1step.json"))
        _queue_and_wait_for_pngs(ui, base_dir, good, prefixes, "sd15_1step.json")
