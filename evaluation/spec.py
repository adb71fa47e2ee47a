"""What a prediction's channels mean: nnU-Net's labels (softmax) or regions (sigmoid), ignore label, class keys.

Mirrors :class:`nnunetv2.utilities.label_handling.label_handling.LabelManager` (which it uses to parse
``dataset.json``), so that class keys, channel order and the hard-map rule are nnU-Net's own:

* label model: channel ``i`` is label ``i`` (nnU-Net requires consecutive labels 0..K-1, background 0); the
  evaluated classes are the foreground labels, keys ``"1"``, ``"2"``, ... (``str(label)``);
* region model: channel ``i`` is ``foreground_regions[i]`` (no background channel), keys ``"(1, 2)"``,
  ``"(2,)"`` (``str(tuple)``), exactly the strings nnU-Net's ``save_summary_json`` writes;
* hard map: argmax over channels (labels), or for regions ``seg[p_i > 0.5] = regions_class_order[i]`` in
  channel order (later channels overwrite earlier ones), as ``LabelManager.convert_probabilities_to_segmentation``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

LabelOrRegion = Union[int, Tuple[int, ...]]


def class_key(label_or_region: LabelOrRegion) -> str:
    """nnU-Net's ``label_or_region_to_key``: ``1 -> "1"``, ``(1, 2) -> "(1, 2)"``."""
    if isinstance(label_or_region, (list, tuple)):
        return str(tuple(int(i) for i in label_or_region))
    return str(int(label_or_region))


@dataclass(frozen=True)
class TaskSpec:
    has_regions: bool
    #: label model: labels of the channels (0..K-1); region model: the regions of the channels
    channels: Tuple[LabelOrRegion, ...]
    #: the evaluated classes (foreground labels / all regions) and the channel that carries each
    classes: Tuple[LabelOrRegion, ...]
    class_channels: Tuple[int, ...]
    regions_class_order: Optional[Tuple[int, ...]]
    ignore_label: Optional[int]
    #: every label a reference may contain (background, foreground labels; not the ignore label)
    valid_labels: Tuple[int, ...]

    @classmethod
    def from_dataset_json(cls, dataset_json: dict) -> "TaskSpec":
        from nnunetv2.utilities.label_handling.label_handling import LabelManager
        lm = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
        return cls.from_label_manager(lm)

    @classmethod
    def from_label_manager(cls, lm) -> "TaskSpec":
        labels = tuple(int(i) for i in lm.all_labels)
        if lm.has_regions:
            regions = tuple(tuple(int(j) for j in r) if isinstance(r, (list, tuple)) else int(r)
                            for r in lm.foreground_regions)
            return cls(True, regions, regions, tuple(range(len(regions))),
                       tuple(int(i) for i in lm.regions_class_order), lm.ignore_label, labels)
        if labels != tuple(range(len(labels))):
            raise ValueError(f"nnU-Net needs consecutive labels 0..K-1, dataset.json declares {list(labels)}")
        fg = tuple(int(i) for i in lm.foreground_labels)
        return cls(False, labels, fg, fg, None, lm.ignore_label, labels)

    @classmethod
    def labels(cls, n_labels: int, ignore_label: Optional[int] = None) -> "TaskSpec":
        """A label (softmax) task with labels ``0..n_labels-1``; handy for tests and the Python API."""
        labels = tuple(range(n_labels))
        return cls(False, labels, labels[1:], labels[1:], None, ignore_label, labels)

    @classmethod
    def regions(cls, regions: Sequence[Sequence[int]], regions_class_order: Sequence[int],
                ignore_label: Optional[int] = None) -> "TaskSpec":
        regs = tuple(tuple(int(j) for j in r) for r in regions)
        labels = tuple(sorted({0, *[j for r in regs for j in r], *[int(c) for c in regions_class_order]}))
        return cls(True, regs, regs, tuple(range(len(regs))), tuple(int(c) for c in regions_class_order),
                   ignore_label, labels)

    # ------------------------------------------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def keys(self) -> List[str]:
        return [class_key(c) for c in self.classes]

    @property
    def max_label(self) -> int:
        """Largest value a reference may hold (the ignore label included)."""
        return max(list(self.valid_labels) + ([self.ignore_label] if self.ignore_label is not None else []))

    @property
    def n_label_values(self) -> int:
        """Size of the label axis of the confusion matrix (0..max_label)."""
        return self.max_label + 1

    def membership(self, label_or_region: LabelOrRegion) -> np.ndarray:
        """Boolean lookup table over label values 0..max_label: which labels belong to the class/region."""
        lut = np.zeros(self.n_label_values, dtype=bool)
        for lab in (label_or_region if isinstance(label_or_region, tuple) else (label_or_region,)):
            if lab < self.n_label_values:
                lut[lab] = True
        return lut

    def channel_membership(self) -> np.ndarray:
        """``(n_channels, n_label_values)`` uint8 table: 1 where a reference label is positive for a channel."""
        return np.stack([self.membership(c) for c in self.channels]).astype(np.uint8)

    def nnunet_map(self, probabilities: np.ndarray, dtype=None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """nnU-Net's hard map -- the one home of its rule -- and, for label models, the top-label confidence.

        Labels: argmax over channels, the first maximum winning (as ``np.argmax``, which is slow along axis 0),
        with ``max p``; regions: ``seg[p_i > 0.5] = regions_class_order[i]`` in channel order (later channels
        overwrite), confidence None -- both identical to ``LabelManager.convert_probabilities_to_segmentation``.
        """
        dtype = self._map_dtype if dtype is None else dtype
        if self.has_regions:
            return self._regions_map(probabilities, [0.5] * self.n_channels, dtype), None
        seg = np.zeros(probabilities.shape[1:], dtype=dtype)
        conf = probabilities[0].copy()
        for c in range(1, probabilities.shape[0]):
            np.copyto(seg, c, where=probabilities[c] > conf)
            np.maximum(conf, probabilities[c], out=conf)
        return seg, conf

    @property
    def _map_dtype(self):
        return np.uint8 if self.max_label < 255 else np.uint16

    def _regions_map(self, probabilities: np.ndarray, thresholds: Sequence[float], dtype) -> np.ndarray:
        seg = np.zeros(probabilities.shape[1:], dtype=dtype)
        for i, c in enumerate(self.regions_class_order):
            np.copyto(seg, c, where=probabilities[i] > thresholds[i])
        return seg

    def hard_map(self, probabilities: np.ndarray, thresholds: Optional[Sequence[float]] = None) -> np.ndarray:
        """Label map from ``(C, ...)`` probabilities.

        ``thresholds=None``: nnU-Net's rule (:meth:`nnunet_map`).
        With one threshold per evaluated class: regions ``seg[p_i > T_i] = regions_class_order[i]`` in channel
        order; labels: a voxel gets the foreground class with the largest ``p_c`` among those with
        ``p_c > T_c``, else background (so with all ``T_c >= 0.5`` a class mask is exactly ``{p_c > T_c}``).
        """
        if thresholds is None:
            return self.nnunet_map(probabilities)[0]
        thr = [float(t) for t in thresholds]
        if len(thr) != len(self.classes):
            raise ValueError(f"need one threshold per class ({len(self.classes)}), got {len(thr)}")
        if self.has_regions:
            return self._regions_map(probabilities, thr, self._map_dtype)
        best = np.zeros(probabilities.shape[1:], dtype=probabilities.dtype)
        seg = np.zeros(probabilities.shape[1:], dtype=self._map_dtype)
        for c, ch, t in zip(self.classes, self.class_channels, thr):
            p = probabilities[ch]
            win = (p > t) & (p > best)
            seg[win] = c
            best[win] = p[win]
        return seg
