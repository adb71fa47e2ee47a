"""Peer implementations of our losses -- torch's, MONAI's and nnU-Net's -- timed beside them in bench_losses.py.

A peer is another library's implementation of the *same* formula, called the way a user of that library would
call it on nnU-Net's inputs (an int16 label map ``(B, 1, *spatial)`` or bool region maps ``(B, R, *spatial)``),
so the conversions that library needs (``.long()``, ``.float()``) are part of its time, as they are part of ours.
Where a peer differs from our loss by a constant factor only (MONAI's focal loss averages over channels too,
nnU-Net's soft Dice returns ``-Dice``) that is noted; the work done is the same.

* ``ce``: ``torch.nn.functional.cross_entropy`` / ``binary_cross_entropy_with_logits``; nnU-Net's
  ``RobustCrossEntropyLoss`` (labels);
* ``wce``: torch's CE / BCE with per-class weights, ``reduction='none'`` then ``mean`` (our formula; torch's
  weighted ``'mean'`` divides by the sum of weights instead);
* ``softdice`` / ``softjaccard`` / ``tversky`` / ``focal``: MONAI's ``DiceLoss`` (``jaccard=True`` for Jaccard),
  ``TverskyLoss(alpha=0.3, beta=0.7)``, ``FocalLoss(gamma=2, alpha=0.5)``; nnU-Net's
  ``MemoryEfficientSoftDiceLoss`` for soft Dice;
* ``dice_ce``: nnU-Net's ``DC_and_CE_loss`` / ``DC_and_BCE_loss`` (the baseline itself) and, labels only, MONAI's
  ``DiceCELoss`` (with several sigmoid channels MONAI computes a softmax CE, another loss).

Losses without a peer (DSC++, Focal Tversky, Combo, Unified Focal, the ++ forms, Lovász) are compared with
nnU-Net's default loss only. MONAI is optional: without it its peers are skipped and the benchmark says so.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

Peer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def monai_missing_reason() -> Optional[str]:
    """None when MONAI imports, else why its peers are skipped."""
    try:
        import monai.losses  # noqa: F401
    except Exception as exc:  # ImportError, or a MONAI that does not work with this torch
        return f"MONAI peers skipped ({type(exc).__name__}: {exc}); pip install monai to time them"
    return None


def _torch_ce(region: bool, weights: Optional[List[float]] = None) -> Peer:
    """torch's CE (labels) / BCE with logits (regions); with ``weights``: per-voxel weighted terms, plain mean."""
    if region:
        def bce(x, t):
            w = None if weights is None else torch.as_tensor(weights, dtype=x.dtype, device=x.device)
            if w is None:
                return F.binary_cross_entropy_with_logits(x, t.to(x.dtype))
            w_pos, w_neg = (1 / (2 * w)).view(1, -1, *[1] * (x.ndim - 2)), (1 / (2 - 2 * w)).view(1, -1, *[1] * (x.ndim - 2))
            return F.binary_cross_entropy_with_logits(x, t.to(x.dtype), weight=w_neg, pos_weight=w_pos / w_neg)
        return bce

    def ce(x, t):
        if weights is None:
            return F.cross_entropy(x, t[:, 0].long())
        w = 1 / (len(weights) * torch.as_tensor(weights, dtype=x.dtype, device=x.device))
        return F.cross_entropy(x, t[:, 0].long(), weight=w, reduction="none").mean()
    return ce


def _nnunet_ce() -> Peer:
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
    return RobustCrossEntropyLoss()


def _nnunet_soft_dice(region: bool) -> Peer:
    """nnU-Net's ``MemoryEfficientSoftDiceLoss`` as ``nnUNetTrainer`` configures it (it returns ``-Dice``)."""
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1
    nonlin = torch.sigmoid if region else softmax_helper_dim1
    return MemoryEfficientSoftDiceLoss(apply_nonlin=nonlin, batch_dice=False, do_bg=region, smooth=1e-5, ddp=False)


def _monai(name: str, region: bool) -> Peer:
    """MONAI's loss ``name`` with our defaults; labels one-hot encoded by MONAI (``to_onehot_y``)."""
    import monai.losses as ML
    act = dict(sigmoid=True) if region else dict(softmax=True, to_onehot_y=True)
    overlap = dict(include_background=region, **act)  # do_bg=False on labels, every region in region mode
    if name == "softdice":
        loss = ML.DiceLoss(**overlap)
    elif name == "softjaccard":
        loss = ML.DiceLoss(jaccard=True, **overlap)
    elif name == "tversky":
        loss = ML.TverskyLoss(alpha=0.3, beta=0.7, **overlap)
    elif name == "focal":
        loss = ML.FocalLoss(gamma=2.0, alpha=0.5, use_softmax=not region, to_onehot_y=not region)
    elif name == "dice_ce":
        loss = ML.DiceCELoss(**overlap)
    else:  # pragma: no cover - programming error
        raise KeyError(name)
    if region:  # MONAI's overlap losses subtract from a bool target: give it floats, as a MONAI user must
        return lambda x, t: loss(x, t.to(x.dtype))
    return loss


def make_peers(region: bool, wce_priors: List[float]) -> Dict[str, Dict[str, Peer]]:
    """``{our loss name: {peer label: callable(logits, target)}}`` for this mode; MONAI's only if installed."""
    peers: Dict[str, Dict[str, Peer]] = {
        "ce": {"torch " + ("BCE-with-logits" if region else "cross_entropy"): _torch_ce(region)},
        "wce": {"torch weighted " + ("BCE" if region else "CE"): _torch_ce(region, wce_priors)},
        "softdice": {"nnU-Net MemoryEfficientSoftDice": _nnunet_soft_dice(region)},
        "dice_ce": {},  # nnU-Net's own is the baseline, printed in its own column
    }
    if not region:
        peers["ce"]["nnU-Net RobustCE"] = _nnunet_ce()
    if monai_missing_reason() is None:
        monai_names = ["softdice", "softjaccard", "tversky", "focal"] + ([] if region else ["dice_ce"])
        for name in monai_names:
            peers.setdefault(name, {})[f"MONAI {_monai_class(name)}"] = _monai(name, region)
    return {name: p for name, p in peers.items() if p}


def _monai_class(name: str) -> str:
    return {"softdice": "DiceLoss", "softjaccard": "DiceLoss(jaccard)", "tversky": "TverskyLoss",
            "focal": "FocalLoss", "dice_ce": "DiceCELoss"}[name]
