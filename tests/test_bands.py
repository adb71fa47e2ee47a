"""Distance bands (evaluation/bands.py) against a brute-force reference: distances from every voxel centre to every
voxel centre of the other side (float64, no distance transform, no cropping), on anisotropic spacing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_losses.evaluation.accumulate import BinGrid, accumulate_case
from nnunet_losses.evaluation.bands import BANDS, band_index, bands_summary, case_band_table, case_bands
from nnunet_losses.evaluation.spec import TaskSpec


def brute_bands(mask, spacing):
    """Band of each voxel by the definition: min distance (mm) to a voxel centre on the other side."""
    coords = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(mask.shape, spacing)], indexing="ij"), -1)
    pts = coords.reshape(-1, mask.ndim)
    m = mask.reshape(-1)
    out = np.empty(m.size, dtype=int)
    for i in range(m.size):
        other = pts[m != m[i]]
        if not len(other):
            out[i] = 0 if m[i] else 7
            continue
        d = np.sqrt(((other - pts[i]) ** 2).sum(1)).min()
        s = 0 if d <= 1 else 1 if d <= 2 else 2 if d <= 4 else 3
        out[i] = 3 - s if m[i] else 4 + s
    return out.reshape(mask.shape)


def blob_case(rng, shape=(9, 14, 15), spacing=(2.0, 0.7, 0.9)):
    g = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij"))
    centre = np.array([s * sp / 2 for s, sp in zip(shape, spacing)])[:, None, None, None]
    d = np.sqrt(((g - centre) ** 2).sum(0))
    ref = np.zeros(shape, np.uint8)
    ref[d < 4.0] = 1
    ref[(d < 2.0) & (g[1] > centre[1, 0, 0, 0])] = 2
    logits = rng.normal(0, 1, (3, *shape))
    logits[1] += 3 * (ref >= 1)
    logits[2] += 3 * (ref == 2)
    p = np.exp(logits) / np.exp(logits).sum(0)
    return p.astype(np.float32), ref


def test_band_index_equals_the_definition():
    rng = np.random.default_rng(0)
    p, ref = blob_case(rng)
    spacing = (2.0, 0.7, 0.9)
    for c in (1, 2):
        assert np.array_equal(band_index(ref >= c, spacing), brute_bands(ref >= c, spacing))
    assert (band_index(np.zeros((3, 4)), (1, 1)) == 7).all()


def test_case_bands_equal_per_voxel_sums_over_the_whole_image():
    """Counts, FP/FN and reliability per band: the cropped computation + totals of the streamed pass equal sums
    over every voxel with brute-force bands (ignore label included)."""
    rng = np.random.default_rng(1)
    spacing = (2.0, 0.7, 0.9)
    p, ref = blob_case(rng, shape=(12, 30, 28))
    ref = ref.copy()
    ref[0, :5, :5] = 3  # ignore label
    spec = TaskSpec.labels(3, ignore_label=3)
    grid = BinGrid()
    stats = accumulate_case(p, ref, spec, grid)
    got = case_bands(p, ref, spec, stats, grid, spacing)
    valid = ref != 3
    hard = p.argmax(0)
    for key, c in (("1", 1), ("2", 2)):
        y = ref == c
        band = brute_bands(y, spacing)
        pred = hard == c
        for i in range(len(BANDS)):
            sel = valid & (band == i)
            assert got[key]["count"][i] == sel.sum()
            assert got[key]["FP"][i] == (sel & pred & ~y).sum()
            assert got[key]["FN"][i] == (sel & ~pred & y).sum()
            q = p[c][sel].astype(np.float64)
            assert got[key]["reliability"][i, :, 0].sum() == pytest.approx(sel.sum())
            assert got[key]["reliability"][i, :, 1].sum() == pytest.approx(q.sum(), rel=1e-9)
            assert got[key]["reliability"][i, :, 2].sum() == pytest.approx(y[sel].sum())
        table = case_band_table(got, 0.5)[key]
        near = valid & (band == 4)
        edges = np.linspace(0, 1, 16)
        b = np.clip(np.searchsorted(edges, p[c][near].astype(np.float64), side="left") - 1, 0, 14)
        ece = sum(abs(y[near][b == k].sum() - p[c][near][b == k].astype(np.float64).sum()) for k in range(15))
        assert table["outside 0-1"]["ECE"] == pytest.approx(ece / near.sum(), rel=1e-9)
        assert table["outside 0-1"]["FP_volume"] == pytest.approx(0.5 * (near & pred & ~y).sum())
    s = bands_summary([got, got], [0.5, 1.0])
    assert s["per_class"]["1"]["inside 0-1"]["FN_volume_mean"] == pytest.approx(got["1"]["FN"][3] * 0.75)


def test_empty_reference_is_all_far_outside():
    rng = np.random.default_rng(2)
    p, ref = blob_case(rng)
    ref[:] = 0
    spec = TaskSpec.labels(3)
    stats = accumulate_case(p, ref, spec, BinGrid())
    got = case_bands(p, ref, spec, stats, BinGrid(), (1, 1, 1))
    assert got["1"]["count"][7] == ref.size and got["1"]["count"][:7].sum() == 0
    assert got["1"]["FP"][7] == (p.argmax(0) == 1).sum()
    assert math.isnan(case_band_table(got, 1.0)["1"]["inside 0-1"]["ECE"])


def test_evaluate_with_bands_writes_them_from_the_same_pass(tmp_path):
    import json
    from nnunet_losses.evaluation import evaluate
    from nnunet_losses.evaluation.cases import load_reference
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from test_evaluation_export import make_prediction_folder
    pred, gt = make_prediction_folder(tmp_path, dim=3, regions=True, n_cases=2)
    spec = TaskSpec.from_dataset_json(json.loads((pred / "dataset.json").read_text()))
    s = evaluate(pred, tmp_path / "out", reference_folder=gt, plots=True, bands=True)
    c = s["metric_per_case"][1]
    ref, _ = load_reference(c["reference_file"], SimpleITKIO())
    p = np.load(c["prediction_file"])["probabilities"]
    direct = case_bands(p, ref, spec, accumulate_case(p, ref, spec, BinGrid()), BinGrid(), c["spacing"])
    table = case_band_table(direct, c["voxel_volume"])
    assert c["bands"] == table
    assert set(s["bands"]["per_class"]) == set(spec.keys)
    assert (tmp_path / "out" / "bands.csv").is_file() and (tmp_path / "out" / "distance_bands.png").is_file()
    assert "Distance bands" in (tmp_path / "out" / "summary.md").read_text()
