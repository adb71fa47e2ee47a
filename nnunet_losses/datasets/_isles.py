"""What ISLES 2017 and ISLES 2018 share: SMIR/VSD file naming, channel selection, the raw perfusion series.

Every image of a case lies in its own folder, ``<case>/<P>.Brain.XX.O.<TOKEN>.<ID>/<P>.Brain.XX.O.<TOKEN>.<ID>.nii``
with P = SMIR or VSD (the two portals that hosted ISLES), TOKEN the modality (``MR_ADC``, ``CT_CBF``, ...;
``OT`` is the ground truth) and ID the portal's object ID.

Channels. The seed papers 001/002 use "all image modalities available ... excluding perfusion data" and, for ISLES
2018, the "CT perfusion-derived parameter maps": what they leave out is the *raw* 4D perfusion series (4DPWI),
not the parameter maps derived from it. Hence ``perfusion``:

* ``"maps"`` (default, the papers' setting): every 3D modality, the raw 4D perfusion series omitted;
* ``"none"``: the perfusion parameter maps omitted too (ISLES 2017: ADC only; ISLES 2018: CT only);
* ``"raw"``: the parameter maps plus the raw 4D series, kept as two 3D channels -- its temporal maximum and mean
  (nnU-Net takes 3D channels of equal count per case and the number of time points varies between cases).

``modalities`` (a list of channel names, e.g. ``["ADC", "Tmax"]``; ``"4DPWI"`` for the two summary channels)
overrides ``perfusion``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_losses.datasets.converter import SourceCase, Converter, SourceDataError, check_label_values, read_3d, write_label_like

FILE_RE = re.compile(r"^(?:SMIR|VSD)\.Brain\.XX\.O\.(?P<token>[A-Za-z0-9_]+)\.(?P<oid>\d+)\.nii(?:\.gz)?$")
PERFUSION_MODES = ("maps", "none", "raw")
RAW = "4DPWI"


def scan_case(folder: Path) -> Dict[str, List[Path]]:
    """Token -> files of that modality in a case folder (searched recursively, macOS debris skipped)."""
    found: Dict[str, List[Path]] = {}
    for p in sorted(folder.rglob("*.nii*")):
        if any(part.startswith(("__MACOSX", "._")) for part in p.relative_to(folder).parts):
            continue
        m = FILE_RE.match(p.name)
        if m and p.is_file():
            found.setdefault(m.group("token"), []).append(p)
    return found


class ISLESConverter(Converter):
    tokens: Dict[str, str] = {}  # modality (channel) name -> file token, RAW included
    anatomical: Tuple[str, ...] = ()  # modalities that are not perfusion maps
    perfusion_maps: Tuple[str, ...] = ()
    not_inputs: Tuple[str, ...] = ()  # present in training but not in the test set (ISLES 2018's MR_DWI)
    options = {"perfusion": "maps", "modalities": None}

    def check_options(self):
        if self.opts["perfusion"] not in PERFUSION_MODES:
            raise ValueError(f"{self.key}: perfusion must be one of {PERFUSION_MODES}, got {self.opts['perfusion']!r}")
        mods = self.opts["modalities"]
        if mods is not None:
            if isinstance(mods, str):
                mods = [m for m in mods.split(",") if m]
            allowed = self.anatomical + self.perfusion_maps + (RAW,) + self.not_inputs
            bad = [m for m in mods if m not in allowed]
            if bad or not mods or len(set(mods)) != len(mods):
                raise ValueError(f"{self.key}: modalities must be distinct names from {list(allowed)}, got {mods}")
            self.opts["modalities"] = list(mods)

    def selected(self) -> List[str]:
        if self.opts["modalities"] is not None:
            return list(self.opts["modalities"])
        mode = self.opts["perfusion"]
        return list(self.anatomical) + ([] if mode == "none" else list(self.perfusion_maps)) + \
            ([RAW] if mode == "raw" else [])

    def token(self, modality: str) -> str:
        return self.tokens[modality]

    def name(self) -> str:
        if self.opts["modalities"] is not None:
            return self.dataset_name + "Custom"
        return self.dataset_name + {"maps": "", "none": "NoPerfusion", "raw": "RawPWI"}[self.opts["perfusion"]]

    def description(self) -> str:
        return f"{self.title}: binary lesion; channels {', '.join(self.channel_names().values())}"

    def metadata(self) -> dict:
        return {**super().metadata(), "channels": self.selected()}

    def channel_names(self):
        names: List[str] = []
        for m in self.selected():
            names += [f"{RAW}_max", f"{RAW}_mean"] if m == RAW else [m]
        return dict(enumerate(names))

    def collect(self, case_dirs: Sequence[Path], source: Path, labelled: bool, missing: List[str],
                case_id=lambda d: d.name) -> List[SourceCase]:
        cases = []
        for d in case_dirs:
            found = scan_case(d)
            paths = []
            for m in self.selected() + (["OT"] if labelled else []):
                tok = "OT" if m == "OT" else self.token(m)
                files = found.get(tok, [])
                rel = d.relative_to(source)
                if not files:
                    missing.append(f"{rel}/SMIR.Brain.XX.O.{tok}.<id>/SMIR.Brain.XX.O.{tok}.<id>.nii "
                                   f"(no {tok} image)")
                elif len(files) > 1:
                    missing.append(f"{rel}: a single {tok} image (found {len(files)}: "
                                   f"{', '.join(f.name for f in files)})")
                paths.append(files[0] if files else None)
            cases.append(SourceCase(case_id(d), tuple(paths[:len(self.selected())]),
                              paths[-1] if labelled else None))
        return cases

    def convert_case(self, case: SourceCase, images_dir: Path, labels_dir: Optional[Path]) -> None:
        import SimpleITK as sitk
        modalities = self.selected()
        # the geometry of the case: its label if it has one, else its first 3D channel
        ref_path = case.label if case.label is not None else next(
            (p for m, p in zip(modalities, case.images) if m != RAW), None)
        ref = read_3d(ref_path) if ref_path is not None else None
        channel = 0
        for m, src in zip(modalities, case.images):
            if m == RAW:
                for arr in _raw_summaries(src, ref):
                    out = sitk.GetImageFromArray(arr)
                    out.CopyInformation(ref)
                    sitk.WriteImage(out, str(images_dir / f"{case.case_id}_{channel:04d}.nii.gz"), useCompression=True)
                    channel += 1
            else:
                sitk.WriteImage(read_3d(src), str(images_dir / f"{case.case_id}_{channel:04d}.nii.gz"),
                                useCompression=True)
                channel += 1
        if labels_dir is not None and case.label is not None:
            seg = sitk.GetArrayFromImage(ref)
            check_label_values(seg, (0, 1), case.label)
            write_label_like(seg, ref, labels_dir / f"{case.case_id}.nii.gz")


def _raw_summaries(path: Path, ref) -> List[np.ndarray]:
    """Temporal maximum and mean (z, y, x) of a raw 4D/5D perfusion series, on the grid of ``ref``."""
    if ref is None:
        raise SourceDataError(f"{path}: the raw perfusion series needs a 3D channel or label of the same case "
                              f"for its geometry")
    import nibabel as nib
    data = np.asanyarray(nib.load(str(path)).dataobj)
    while data.ndim > 4 and 1 in data.shape[3:]:  # ISLES 2017 stores (x, y, z, 1, t)
        data = np.squeeze(data, axis=data.shape[3:].index(1) + 3)
    if data.ndim != 4 or tuple(data.shape[:3]) != tuple(ref.GetSize()):
        raise SourceDataError(f"{path}: raw perfusion series of shape {data.shape} does not match the case's 3D "
                              f"grid {ref.GetSize()} (x, y, z)")
    data = data.astype(np.float32, copy=False)
    return [np.ascontiguousarray(s.transpose(2, 1, 0)) for s in (data.max(axis=3), data.mean(axis=3))]
