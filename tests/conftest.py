"""Shared fixtures."""

import os

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(HERE, "proxy", "weights", "teacher")
FLOW_TEACHER = os.path.join(HERE, "proxy", "weights", "flow_teacher")
CLASSIFIER = os.path.join(HERE, "proxy", "weights", "classifier.safetensors")
# the tests that need a real ComfyUI (scripts/test_comfyui.sh runs them) or its files (scripts/test.sh
# sets COMFYUI_PATH for the rest of the suite)
COMFYUI_TESTS = ("tests/comfyui/", "tests/test_training_comfyui.py",
                 "tests/test_training_single_file.py::test_comfyui_tokenizer_files_give_the_clip_token_ids")


def _comfyui_required() -> bool:
    """In CI (``CI=true``) with a ComfyUI source beside the repository, the ComfyUI tests must run."""
    src = os.environ.get("COMFYUI_SRC") or os.path.join(HERE, "..", "shared", "comfyui")
    return os.environ.get("CI", "").lower() == "true" and os.path.isfile(os.path.join(src, "main.py"))


def _comfyui_test(nodeid: str) -> bool:
    return nodeid.replace(os.sep, "/").startswith(COMFYUI_TESTS)


def _skip_is_failure(report, nodeid: str) -> None:
    if report.skipped and _comfyui_test(nodeid) and _comfyui_required():
        report.outcome = "failed"
        report.longrepr = (f"{nodeid} skipped in CI although a ComfyUI source is available "
                           f"(scripts/test.sh runs it with ComfyUI): {report.longrepr}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_is_failure(outcome.get_result(), collector.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_is_failure(outcome.get_result(), item.nodeid)


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    """``(model folder, prompts file)``: ``training.tiny.build_tiny_sd15(width=32)`` and three prompts;
    with ``tiny_run.TINY_FLAGS`` a whole ``training.distill`` run takes seconds."""
    from training.tiny import build_tiny_sd15

    root = tmp_path_factory.mktemp("tiny_sd15")
    prompts = root / "p.txt"
    prompts.write_text("a red cat\na blue house\na green tree\n", encoding="utf-8")
    return build_tiny_sd15(str(root / "m"), width=32), str(prompts)


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """A phase-1 cache of the committed proxy teacher (3 captions x 4 seeds, 4 teacher steps) in
    ``out/w/cache`` and a 1-step RayFlow LoRA ``out/ray.safetensors``; returns ``(out, labels)``."""
    if not os.path.isdir(TEACHER):
        pytest.skip("the committed proxy teacher is missing (proxy/weights/teacher)")
    from proxy.data import all_labels, caption_of
    from training.config import DistillConfig
    from training.distill import run

    out = tmp_path_factory.mktemp("proxy_cache")
    labels = all_labels()[:3]
    (out / "p.txt").write_text("".join(caption_of(l) + "\n" for l in labels.tolist()))
    cfg = DistillConfig(model=TEACHER, prompts=str(out / "p.txt"), output=str(out / "ray.safetensors"),
                        work_dir=str(out / "w"), resolution=16, seeds_per_prompt=4, teacher_steps=4, teacher_cfg=3.0,
                        shard_size=8, train_steps=1, batch_size=4, lora_rank=4, lora_alpha=4.0)
    cfg.validate()
    run(cfg, progress=False)
    return out, labels


@pytest.fixture(scope="session")
def tiny_flow_teacher(tmp_path_factory):
    """A flow proxy teacher of ``proxy.teacher_flow`` after one training step (its shapes and files;
    time shift 2, patch size 1)."""
    from proxy.teacher_flow import train

    out = str(tmp_path_factory.mktemp("flow") / "flow_teacher")
    train(out, steps=1, batch=2, seed=0, lr=1e-3, shift=2.0, patch_size=1)
    return out
