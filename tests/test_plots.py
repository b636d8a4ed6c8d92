from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.plots import plot_metric_vs_noise, plot_pr_curves, plot_training_curves


def png_size(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return image.size


def test_pr_curves_are_written_as_a_png(tmp_path):
    recall = np.linspace(0, 1, 11)
    curves = {"image -> text": (1 - 0.5 * recall, recall), "text -> image": (1 - 0.3 * recall, recall)}
    path = plot_pr_curves(curves, tmp_path / "sub" / "pr.png", "tiny")
    width, height = png_size(path)
    assert width > 300 and height > 300


def test_training_curves_get_one_panel_per_logged_quantity_and_one_line_per_stage(tmp_path):
    log = [{"stage": s, "epoch": e, "time": 0.0, "loss": 1 / e, "gce_loss": 0.5 / e, "val_loss": None if e == 1 else e}
           for s in ("spl:image", "rsc:image") for e in (1, 2, 3)]
    three = png_size(plot_training_curves(log, tmp_path / "three.png"))
    one = png_size(plot_training_curves({"spl:text": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}]},
                                        tmp_path / "one.png"))
    assert three[0] > 2 * one[0]  # loss, gce_loss and val_loss side by side


def test_an_empty_training_log_still_gives_a_figure(tmp_path):
    assert png_size(plot_training_curves([], tmp_path / "empty.png"))[0] > 100


def test_metric_vs_noise_is_written_as_a_png(tmp_path):
    table = [{"method": m, "noise": r, "MAP@all": 0.6 - r / (2 if m == "drcl" else 1)}
             for m in ("drcl", "sdml") for r in (0.6, 0.2, 0.4)]
    assert png_size(plot_metric_vs_noise(table, tmp_path / "noise.png", title="wiki"))[0] > 300


def twenty_pairs() -> dict:
    modalities = ("image", "text", "audio", "mesh", "video")
    recall = np.linspace(0, 1, 11)
    return {f"{q} -> {t}": (1 - (0.1 + 0.04 * i) * recall, recall)
            for i, (q, t) in enumerate((q, t) for q in modalities for t in modalities if q != t)}


def test_twenty_pairs_become_one_panel_per_query_modality_under_one_legend(tmp_path):
    from pipelines.plots import _by_query

    curves = twenty_pairs()
    grouped = _by_query(curves)
    assert list(grouped) == ["image", "text", "audio", "mesh", "video"]
    assert all(len(targets) == 4 and query not in targets for query, targets in grouped.items())
    many = png_size(plot_pr_curves(curves, tmp_path / "twenty.png", "digits"))
    two = png_size(plot_pr_curves(dict(list(curves.items())[:2]), tmp_path / "two.png"))
    assert many[0] > 2.5 * two[0] and many[1] > 1.8 * two[1]  # 3 columns x 2 rows of panels


def test_many_curves_without_pair_labels_keep_one_panel_with_the_legend_beside_it(tmp_path):
    from pipelines.plots import _by_query

    curves = {f"run {i}": curve for i, curve in enumerate(twenty_pairs().values())}
    assert _by_query(curves) is None
    wide = png_size(plot_pr_curves(curves, tmp_path / "runs.png"))
    two = png_size(plot_pr_curves(dict(list(curves.items())[:2]), tmp_path / "two.png"))
    assert wide[0] > two[0] and wide[1] == two[1]
