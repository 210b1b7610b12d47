"""Proxy data determinism and the sanity of the proxy metrics."""

import torch

from proxy.classifier import AttributeClassifier, frechet_distance, mean_pairwise_distance
from proxy.data import ATTRIBUTES, all_labels, caption_of, make_dataset, parse_caption, render, vocabulary


def test_dataset_is_deterministic_and_captions_match_labels():
    a, b = make_dataset(64, seed=3), make_dataset(64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.captions == b.captions
    c = make_dataset(64, seed=4)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 3, 16, 16) and float(a.images.min()) >= -1 and float(a.images.max()) <= 1
    for lab, cap in zip(a.labels.tolist(), a.captions):
        assert parse_caption(cap) == lab
    assert set(" ".join(caption_of(l) for l in all_labels().tolist()).split()) <= set(vocabulary())
    assert len(all_labels()) == 2 * 4 * 3 * 3


def test_rendered_colours_are_the_captioned_ones():
    labels = torch.tensor([[1, c, 1, 1] for c in range(4)])          # large squares on black
    img = (render(labels, torch.Generator().manual_seed(0)) + 1) / 2
    centre = img[:, :, 6:10, 6:10].mean((2, 3))                        # a large square covers the centre
    assert centre.argmax(1).tolist()[:3] == [0, 1, 2]                  # red, green, blue dominate their channel


def test_frechet_distance_is_zero_on_identical_sets_and_grows_with_corruption():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2000, 8, generator=g)
    assert abs(frechet_distance(f, f)) < 1e-6
    other = torch.randn(2000, 8, generator=g)
    d_same = frechet_distance(f, other)
    d_shift = frechet_distance(f, other + 0.5)
    d_scale = frechet_distance(f, other * 2)
    assert d_same < 0.05 and d_shift > 1.5 and d_scale > 5
    assert abs(d_shift - (2.0 + d_same)) < 0.2                        # |mu1 - mu2|^2 = 8 * 0.25


def test_diversity_statistic_detects_collapse():
    g = torch.Generator().manual_seed(1)
    groups = torch.arange(10).repeat_interleave(5)
    spread = torch.randn(50, 4, generator=g)
    collapsed = torch.randn(10, 4, generator=g).repeat_interleave(5, 0)
    assert mean_pairwise_distance(collapsed, groups) == 0.0 < mean_pairwise_distance(spread, groups)


def test_classifier_shapes():
    m = AttributeClassifier()
    x = torch.zeros(3, 3, 16, 16)
    assert m.features(x).shape == (3, 32)
    assert [o.shape[1] for o in m(x)] == [len(v) for v in ATTRIBUTES.values()]
    assert m.predict(x).shape == (3, 4)


def test_demo_reports_a_missing_teacher(tmp_path, capsys):
    from proxy.demo import main

    rc = main(["--quick", "--out", str(tmp_path / "o"), "--teacher", str(tmp_path / "none")])
    assert rc == 2 and "proxy teacher is missing" in capsys.readouterr().err
