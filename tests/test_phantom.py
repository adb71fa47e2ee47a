"""nnunet_losses.research.phantom: nnU-Net raw datasets whose expected reference volumes are known exactly."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_losses.research.phantom import load_sidecar, phantom_case, write_phantom_dataset
from conftest import run_cli


def read(path):
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing()


def check_dataset(out, n_cases, shape_zyx, spacing_zyx, p):
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == n_cases and meta["labels"] == {"background": 0, "structure": 1}
    side = load_sidecar(out)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000
    assert side["voxel_volume_ml"] == pytest.approx(voxel_ml) and side["spacing_zyx_mm"] == list(spacing_zyx)
    assert sorted(side["cases"]) == [f"case_{i:03d}" for i in range(n_cases)]
    for cid, rec in side["cases"].items():
        image, sp_img = read(out / "imagesTr" / f"{cid}_0000.nii.gz")
        label, sp_lab = read(out / "labelsTr" / f"{cid}.nii.gz")
        prob, sp_prob = read(rec["probability_map"])
        assert image.shape == label.shape == prob.shape == tuple(shape_zyx)
        # SimpleITK spacing is (x, y, z): the reverse of the array order
        for sp in (sp_img, sp_lab, sp_prob):
            np.testing.assert_allclose(sp, spacing_zyx[::-1])
        assert image.dtype == np.float32 and prob.dtype == np.float32 and label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1} and prob.min() >= 0 and prob.max() <= 1
        # the probability map integrates to the expected volume; the label map to the drawn reference volume
        assert prob.astype(np.float64).sum() * voxel_ml == pytest.approx(rec["expected_volume_ml"], rel=1e-9)
        assert label.sum() * voxel_ml == pytest.approx(rec["reference_volume_ml"], rel=1e-12)
        # labels are only ever drawn where the probability is positive, and always where it is 1
        assert not np.any(label[prob == 0]) and np.all(label[prob == 1] == 1)
    return side


def test_regions_2d_dataset_exact_volumes_and_anisotropic_spacing(tmp_path):
    spacing = (2.0, 0.5, 0.8)  # slice thickness 2 mm, in-plane 0.5 x 0.8 mm
    out = write_phantom_dataset(tmp_path, 321, dim=2, p=0.3, n_subregions=4, mu=1.0, n_cases=4, shape=(48, 40),
                                spacing=spacing, radius_range=(4.0, 6.0), noise=0.0, seed=3)
    assert out.name == "Dataset321_PhantomRegions2D"
    side = check_dataset(out, 4, (1, 48, 40), spacing, 0.3)
    for cid, rec in side["cases"].items():
        # exact expected volume: core + p * ring
        assert rec["expected_voxels"] == pytest.approx(rec["core_voxels"] + 0.3 * rec["ring_voxels"], rel=1e-7)
        assert rec["reference_voxels"] == rec["core_voxels"] + sum(
            c for c, d in zip(rec["uncertain_voxels"], rec["drawn"]) if d)
        assert sum(rec["uncertain_voxels"]) == rec["ring_voxels"] and min(rec["uncertain_voxels"]) > 0
        # geometry in mm: the core is a disc of the drawn radius (area within a few voxels), ring ~ mu x core
        area_mm2 = rec["core_voxels"] * 0.5 * 0.8
        assert area_mm2 == pytest.approx(np.pi * rec["core_radius_mm"] ** 2, rel=0.1)
        assert rec["mu_realised"] == pytest.approx(1.0, rel=0.15)
        # the image shows the regions, not the draw: with noise 0 every ring voxel is 0.5, drawn in or not
        image, _ = read(out / "imagesTr" / f"{cid}_0000.nii.gz")
        prob, _ = read(rec["probability_map"])
        ring = (prob > 0) & (prob < 1)
        np.testing.assert_array_equal(image[ring], 0.5)
        np.testing.assert_array_equal(image[prob == 1], 1.0)
        np.testing.assert_array_equal(image[prob == 0], 0.0)
        np.testing.assert_allclose(prob[ring], 0.3, rtol=1e-6)
    assert side["theory"]["flip_threshold"] == pytest.approx(0.435795, abs=1e-6)
    assert side["theory"]["sd_optimal_p_hat"] == 0.0 and side["theory"]["ce_optimal_p_hat"] == 0.3


def test_regions_3d_dataset(tmp_path):
    out = write_phantom_dataset(tmp_path, 322, dim=3, p=0.7, n_subregions=16, mu=1.0, n_cases=2,
                                shape=(20, 24, 24), spacing=(1.5, 1.0, 1.0), radius_range=(5.0, 6.0), seed=1)
    side = check_dataset(out, 2, (20, 24, 24), (1.5, 1.0, 1.0), 0.7)
    for rec in side["cases"].values():
        assert rec["core_voxels"] * 1.5 == pytest.approx(4 / 3 * np.pi * rec["core_radius_mm"] ** 3, rel=0.1)
        assert len(rec["drawn"]) == len(rec["uncertain_voxels"]) == 16
    assert side["theory"]["sd_optimal_p_hat"] == 1.0  # p = 0.7 is above the flip


@pytest.mark.parametrize("p,n", [(0.2, 4), (0.8, 1)])
def test_expected_volume_is_the_mean_drawn_volume(p, n):
    """Over many seeded cases, drawn reference volume minus expected volume averages to 0 (within MC error)."""
    rng = np.random.default_rng(7)
    diff, drawn = [], []
    for _ in range(600):
        case = phantom_case(rng, (1, 32, 32), (1.0, 1.0, 1.0), 2, "regions", p, n, 1.0, (4.0, 6.0), 0.1)
        diff.append(case["label"].sum() - case["probability"].astype(np.float64).sum())
        drawn.extend(case["meta"]["drawn"])
    diff = np.asarray(diff)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert abs(np.mean(drawn) - p) < 4 * np.sqrt(p * (1 - p) / len(drawn))


def test_voxel_variant(tmp_path):
    out = write_phantom_dataset(tmp_path, 323, dim=2, variant="voxel", p=0.5, mu=1.0, n_cases=3, shape=(32, 32),
                                radius_range=(4.0, 6.0), blur=1.5, seed=5)
    assert out.name == "Dataset323_PhantomVoxel2D"
    side = check_dataset(out, 3, (1, 32, 32), (1.0, 1.0, 1.0), 0.5)
    prob, _ = read(side["cases"]["case_000"]["probability_map"])
    assert np.count_nonzero((prob > 0.05) & (prob < 0.95)) > 50  # blurred: many genuinely uncertain voxels
    assert side["theory"] is None and side["blur_mm"] == 1.5
    rng = np.random.default_rng(11)
    diff = []
    for _ in range(200):  # every voxel drawn independently: mean drawn volume = integral of the map
        case = phantom_case(rng, (1, 32, 32), (1.0, 1.0, 1.0), 2, "voxel", 0.5, 1, 1.0, (4.0, 6.0), 0.1, 1.5)
        diff.append(case["label"].sum() - case["probability"].astype(np.float64).sum())
    diff = np.asarray(diff)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(diff.size)
    three_d = write_phantom_dataset(tmp_path, 324, dim=3, variant="voxel", p=0.5, mu=1.0, n_cases=1,
                                    shape=(16, 20, 20), radius_range=(3.0, 4.0), seed=5)
    check_dataset(three_d, 1, (16, 20, 20), (1.0, 1.0, 1.0), 0.5)


def test_refuses_to_overwrite_and_bad_settings(tmp_path, capsys):
    write_phantom_dataset(tmp_path, 325, n_cases=1, shape=(32, 32), radius_range=(3.0, 4.0))
    with pytest.raises(FileExistsError):
        write_phantom_dataset(tmp_path, 325, n_cases=1, shape=(32, 32), radius_range=(3.0, 4.0))
    with pytest.raises(FileExistsError):  # same id, other name: nnU-Net could not tell them apart
        write_phantom_dataset(tmp_path, 325, name="Other", n_cases=1, shape=(32, 32), radius_range=(3.0, 4.0))
    with pytest.raises(ValueError, match="does not fit"):
        write_phantom_dataset(tmp_path, 326, n_cases=1, shape=(16, 16), radius_range=(6.0, 8.0), mu=4.0)
    with pytest.raises(ValueError, match="empty"):
        write_phantom_dataset(tmp_path, 327, n_cases=1, shape=(32, 32), radius_range=(1.0, 1.0), n_subregions=64,
                              mu=0.25)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["Dataset325_PhantomRegions2D"]  # nothing half-written
    from nnunet_losses.cli import main
    assert main(["phantom", "-d", "325", "--raw", tmp_path, "--n_cases", "1"]) == 1
    assert "nnunet-losses phantom: error: " in capsys.readouterr().err
    assert main(["phantom", "-d", "328", "--raw", tmp_path, "--n_cases", "2", "-p", "0.2", "-N", "4", "--mu", "1",
                 "--shape", "40", "40", "--radius", "4", "5"]) == 0
    assert "flip at p = 0.4358" in capsys.readouterr().out


def test_dataset_id_used_in_preprocessed_or_results_and_escaping_names_are_refused(tmp_path, monkeypatch, capsys):
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    for folder, taken in ((pre, "Dataset330_Other"), (res, "Dataset331_Other")):
        (folder / taken).mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(res))
    for dataset_id, where in ((330, pre), (331, res)):
        with pytest.raises(FileExistsError, match=f"{where}"):
            write_phantom_dataset(raw, dataset_id, n_cases=1, shape=(32, 32), radius_range=(3.0, 4.0))
    for name in ("../Escaped", "sub/Dir", "/abs"):
        with pytest.raises(ValueError, match="may only contain"):
            write_phantom_dataset(raw, 332, name=name, n_cases=1, shape=(32, 32), radius_range=(3.0, 4.0))
    from nnunet_losses.cli import main
    assert main(["phantom", "-d", "332", "--raw", raw, "--name", "../Escaped", "--n_cases", "1"]) == 1
    assert "may only contain" in capsys.readouterr().err
    assert not raw.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pre", "res"]


@pytest.mark.slow
def test_nnunet_plan_and_preprocess_accepts_a_phantom(nnunet_workspace):
    write_phantom_dataset(nnunet_workspace.raw, 911, dim=2, p=0.5, n_subregions=4, mu=1.0, n_cases=4,
                          shape=(32, 32), radius_range=(4.0, 6.0), seed=0)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", 911, "-c", "2d", "-npfp", "2", "-np", "2",
             "--verify_dataset_integrity"], env=nnunet_workspace.env(), timeout=600)
    plans = json.loads((nnunet_workspace.preprocessed / "Dataset911_PhantomRegions2D" / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]
