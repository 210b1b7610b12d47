"""The committed proxy weights load and behave: the teacher is an ``sd15``-family model that the
demo's samplers can run, and the classifier recognises real proxy data (the metrics' ground truth)."""

import os

import pytest
import torch

from proxy.data import all_labels, render

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(HERE, "proxy", "weights", "teacher")
CLASSIFIER = os.path.join(HERE, "proxy", "weights", "classifier.safetensors")


@pytest.fixture(scope="module")
def teacher():
    if not os.path.isdir(TEACHER):
        pytest.skip("proxy/weights/teacher is absent; rebuild it with `python -m proxy.teacher`")
    from training.models import load_base_model

    return load_base_model(TEACHER)


@pytest.fixture(scope="module")
def classifier():
    if not os.path.isfile(CLASSIFIER):
        pytest.skip("proxy/weights/classifier.safetensors is absent; rebuild it with `python -m proxy.classifier`")
    from proxy.classifier import load_classifier

    return load_classifier(CLASSIFIER)


def test_teacher_is_an_sd15_family_model_and_samples(teacher):
    from proxy.recipe import SIGMA
    from proxy.sampling import rayflow_samples, teacher_samples
    from rayflow import RayProcess

    assert teacher.architecture == "sd15"
    assert teacher.schedule.alphas_cumprod.shape == (1000,)
    labels, seeds = all_labels()[:4], torch.arange(4)
    ddim = teacher_samples(teacher, labels, seeds, "ddim", 2)
    ray, nfe = rayflow_samples(teacher, teacher.unet, labels, seeds, 1, RayProcess(sigma=SIGMA))
    assert nfe == 1
    for imgs in (ddim, ray):
        assert imgs.shape == (4, 3, 16, 16) and torch.isfinite(imgs).all()
        assert float(imgs.min()) >= -1 and float(imgs.max()) <= 1
    # same seeds and captions -> same images (the grid compares samplers on identical inputs)
    assert torch.equal(ddim, teacher_samples(teacher, labels, seeds, "ddim", 2))


def test_classifier_recognises_real_data_and_metrics_order_corruption(classifier):
    from proxy.classifier import evaluate

    labels = all_labels().repeat_interleave(3, 0)
    real_a = render(labels, torch.Generator().manual_seed(1))
    real_b = render(labels, torch.Generator().manual_seed(2))
    clean = evaluate(classifier, real_a, labels, real_b, labels)
    assert clean["alignment"] > 0.95
    assert 0.8 < clean["diversity"] < 1.25
    g = torch.Generator().manual_seed(3)
    noisy = (real_a + 0.5 * torch.randn(real_a.shape, generator=g)).clamp(-1, 1)
    worse = evaluate(classifier, noisy, labels, real_b, labels)
    assert worse["fd_proxy"] > 3 * clean["fd_proxy"]
    assert worse["alignment"] < clean["alignment"]
    assert 0.9 < clean["hf_ratio"] < 1.1 and worse["hf_ratio"] > 2
    # a captions-shuffled set keeps the image distribution but breaks alignment
    shuffled = evaluate(classifier, real_a, labels.roll(3, 0), real_b, labels)   # next caption
    assert shuffled["alignment"] < 0.2
    # the previous caption always has another background, and nearly always the same size
    assert min(clean[f"acc_{a}"] for a in ("size", "color", "shape", "background")) > 0.95
    assert shuffled["acc_background"] < 0.1 and shuffled["acc_size"] > 0.9


def test_demo_reports_a_missing_classifier(tmp_path, capsys):
    from proxy.demo import main

    rc = main(["--quick", "--out", str(tmp_path / "o"), "--classifier", str(tmp_path / "none.safetensors")])
    assert rc == 2 and "proxy classifier is missing" in capsys.readouterr().err
