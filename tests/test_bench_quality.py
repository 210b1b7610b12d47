"""bench/quality.py: variant recipes and redrawing the report from a saved results.json."""

import json

from bench.quality import RECIPE, VARIANTS, main, options, process_of


def test_each_variant_changes_one_thing_of_the_recipe():
    assert options("ray") == RECIPE
    for name in VARIANTS:
        changed = {k for k, v in options(name).items() if RECIPE.get(k, None) != v}
        assert len(changed) <= 1, (name, changed)
    assert process_of("no_ray").sigma == 1.0
    assert process_of("sigma0.3").sigma == 0.3 and process_of("linear").path == "linear"
    # the attention-only ablation drops exactly the convolutions of the default target set
    from training.config import LORA_TARGETS

    attn = set(options("attn_lora")["lora_targets"].split(","))
    assert attn < set(LORA_TARGETS) and all("conv" in t or "emb" in t for t in set(LORA_TARGETS) - attn)


def test_replot_rewrites_the_table_and_plots_from_results_json(tmp_path):
    cell = {"fd_proxy": 10.0, "alignment": 0.9, "diversity": 1.0, "nfe": 1}
    saved = {"results": {"teacher DDIM (reference)": {"25": {**cell, "fd_proxy": 120.0}},
                         "RayFlow ray [noise]": {str(n): {**cell, "fd_proxy": 100.0 / n, "nfe": n} for n in (1, 2, 4, 8)},
                         "curve ray @300": {str(n): cell for n in (1, 2, 4)}},
             "curves": {"ray": {"300": {"1": 50.0, "2": 20.0, "4": 10.0}}}}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert main(["--replot", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| RayFlow ray [noise] | 100.00 / 0.90 / 1 | 50.00 / 0.90 / 2 | 25.00 / 0.90 / 4 | 12.50 / 0.90 / 8 |" in table
    assert "| ray | 50.0 / 20.0 / 10.0 |" in table and "curve ray" not in table
    assert (tmp_path / "fd_vs_steps.png").stat().st_size > 0
    assert (tmp_path / "fd_vs_training_steps.png").stat().st_size > 0
