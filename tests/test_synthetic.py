import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_losses.research.synthetic import write_synthetic_dataset


@pytest.mark.parametrize("kind,dim", [("labels", 3), ("regions", 3), ("ignore", 2), ("regions_ignore", 2)])
def test_synthetic_dataset_layout(tmp_path, kind, dim):
    out = write_synthetic_dataset(tmp_path, 42, kind=kind, dim=dim, n_cases=3, shape=(16, 16, 16) if dim == 3 else (20, 20))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert ("regions_class_order" in meta) == kind.startswith("regions")
    ignore = {"ignore": 2, "regions_ignore": 3}.get(kind)
    assert meta["labels"].get("ignore") == ignore
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "case_000.nii.gz")))
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "case_000_0000.nii.gz")))
    assert label.shape == image.shape == ((16, 16, 16) if dim == 3 else (1, 20, 20))
    assert set(np.unique(label)) <= {0, 1, 2} | ({ignore} if ignore else set()) and (label == 1).any()
    assert (label == ignore).any() == (ignore is not None)
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(tmp_path, 42, kind=kind, dim=dim)
