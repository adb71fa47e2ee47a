"""Post-hoc calibration maps fitted by weighted NLL on voxels sampled from nnU-Net's saved probabilities.

nnU-Net saves probabilities, not logits, so every map works on clamped log-probabilities ``z = log max(p, eps)``
(a logit up to a per-voxel constant, which softmax ignores):

* ``temperature``: ``q = softmax(z / T)`` -- one ``T`` (= ``p^(1/T)`` renormalised); keeps the argmax;
* ``vector``: ``q = softmax(w * z + b)`` -- one scale ``w_c`` (= ``1/T_c``) and bias ``b_c`` per class
  (``b_0 = 0``: softmax is unchanged by a common shift);
* ``dirichlet``: ``q = softmax(W z + b)`` -- Kull et al. 2019, a full ``C x C`` matrix, with their ODIR
  regularisation ``lambda (sum_{i != j} W_ij^2 + sum b^2) / (C (C - 1))`` against over-fitting the off-diagonal.

Region (sigmoid) models: every region channel is its own two-class problem ``z = (log(1-p), log p)``, fitted
separately (a binary temperature is ``sigmoid(logit(p) / T)``).

Why our own Dirichlet calibration: the map is ``softmax(W log p + b)``, fitted here with the same weighted NLL and
analytic gradient (L-BFGS) as the other two; ``dirichletcal`` does not build from its sdist here, and ``netcal``
pulls in pyro, gpytorch and tensorboard for the same few lines.

Saturation: where a probability is below ``eps`` (exact 0 of float32 softmax, the padding outside nnU-Net's crop
box) the log-probability is clamped and the map cannot recover what was lost; :func:`saturated_fraction` reports
how many voxels that is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

METHODS = ("temperature", "vector", "dirichlet")
#: log-probabilities are clamped here (float32's smallest normal number would make log(0) finite but huge; 1e-7
#: is below float32 softmax's resolution near 1 and keeps the fitted scales well conditioned)
LOG_EPS = 1e-7
ODIR_LAMBDA = 1e-3
APPLY_CHUNK = 1 << 18


def log_probabilities(p: np.ndarray, eps: float = LOG_EPS) -> np.ndarray:
    return np.log(np.maximum(np.asarray(p, dtype=np.float64), eps))


def saturated_fraction(p: np.ndarray, weights: Optional[np.ndarray] = None, eps: float = LOG_EPS) -> float:
    """Weighted share of voxels (rows of ``p``, ``(n, K)``) with some probability below ``eps`` (clamped)."""
    sat = (np.asarray(p) < eps).any(1)
    w = np.ones(len(sat)) if weights is None else np.asarray(weights, dtype=np.float64)
    return float((w * sat).sum() / w.sum()) if w.sum() > 0 else math.nan


def _softmax(a: np.ndarray) -> np.ndarray:
    a = a - a.max(1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(1, keepdims=True)


@dataclass
class LinearLogMap:
    """``softmax(W z + b)`` on ``K`` classes (``W``: ``(K, K)``; temperature and vector scaling are diagonal)."""
    W: np.ndarray
    b: np.ndarray

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return _softmax(z @ self.W.T + self.b)


def _unpack(theta: np.ndarray, method: str, K: int) -> LinearLogMap:
    if method == "temperature":
        return LinearLogMap(np.eye(K) * math.exp(-theta[0]), np.zeros(K))
    if method == "vector":
        return LinearLogMap(np.diag(theta[:K]), np.concatenate([[0.0], theta[K:]]))
    W = theta[:K * K].reshape(K, K)
    return LinearLogMap(W, np.concatenate([[0.0], theta[K * K:]]))


def _start(method: str, K: int) -> np.ndarray:
    if method == "temperature":
        return np.zeros(1)  # log T = 0
    if method == "vector":
        return np.concatenate([np.ones(K), np.zeros(K - 1)])
    return np.concatenate([np.eye(K).ravel(), np.zeros(K - 1)])


def _objective(theta, method, z, y, w, lam):
    """Weighted mean NLL (+ ODIR for Dirichlet) and its gradient in ``theta``."""
    K = z.shape[1]
    m = _unpack(theta, method, K)
    a = z @ m.W.T + m.b
    a -= a.max(1, keepdims=True)
    lse = np.log(np.exp(a).sum(1))
    nll = float(np.sum(w * (lse - a[np.arange(len(y)), y])))
    q = np.exp(a - lse[:, None])
    q[np.arange(len(y)), y] -= 1.0
    g = q * w[:, None]                       # dNLL/da, (n, K)
    gW = g.T @ z                             # (K, K)
    gb = g.sum(0)
    if method == "temperature":
        grad = np.array([-float(np.sum(gW.diagonal())) * math.exp(-theta[0])])
    elif method == "vector":
        grad = np.concatenate([gW.diagonal(), gb[1:]])
    else:
        grad = np.concatenate([gW.ravel(), gb[1:]])
        if K > 1:
            off = ~np.eye(K, dtype=bool)
            scale = lam / (K * (K - 1))
            nll += scale * (float(np.sum(m.W[off] ** 2)) + float(np.sum(m.b ** 2)))
            gWr = np.zeros((K, K))
            gWr[off] = 2 * scale * m.W[off]
            grad = grad + np.concatenate([gWr.ravel(), 2 * scale * m.b[1:]])
    return nll, grad


def fit_map(method: str, p: np.ndarray, y: np.ndarray, weights: Optional[np.ndarray] = None,
            lam: float = ODIR_LAMBDA, eps: float = LOG_EPS) -> LinearLogMap:
    """Fit one map on samples: ``p`` ``(n, K)`` probabilities, ``y`` ``(n,)`` class indices, ``weights`` ``(n,)``
    (the sampling weights; normalised to sum 1)."""
    from scipy.optimize import minimize
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {list(METHODS)}")
    z = log_probabilities(p, eps)
    y = np.asarray(y, dtype=np.intp)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not len(y) or w.sum() <= 0:
        raise ValueError("no voxels to fit the calibration on")
    w = w / w.sum()
    res = minimize(_objective, _start(method, z.shape[1]), args=(method, z, y, w, lam), jac=True,
                   method="L-BFGS-B", options={"maxiter": 500})
    return _unpack(res.x, method, z.shape[1])


@dataclass
class CalibrationMap:
    """A fitted map for a whole task: labels -- one ``C``-class map; regions -- one two-class map per channel."""
    method: str
    has_regions: bool
    maps: List[LinearLogMap]
    eps: float = LOG_EPS
    info: Dict[str, object] = field(default_factory=dict)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated ``(C, *shape)`` float32 probabilities, in chunks (memory: a few chunk-sized buffers)."""
        C = probabilities.shape[0]
        P = probabilities.reshape(C, -1)
        out = np.empty(P.shape, dtype=np.float32)
        for s in range(0, P.shape[1], APPLY_CHUNK):
            block = P[:, s:s + APPLY_CHUNK].T.astype(np.float64)
            if self.has_regions:
                for c, m in enumerate(self.maps):
                    two = np.stack([1.0 - block[:, c], block[:, c]], 1)
                    out[c, s:s + APPLY_CHUNK] = m(log_probabilities(two, self.eps))[:, 1]
            else:
                out[:, s:s + APPLY_CHUNK] = self.maps[0](log_probabilities(block, self.eps)).T
        return out.reshape(probabilities.shape)

    def to_json(self) -> dict:
        return {"method": self.method, "task": "regions" if self.has_regions else "labels", "eps": self.eps,
                "formula": "q = softmax(W log(max(p, eps)) + b)" + (" per region on (1-p, p)" if self.has_regions
                                                                    else ""),
                "maps": [{"W": m.W.tolist(), "b": m.b.tolist()} for m in self.maps], **self.info}

    @classmethod
    def from_json(cls, d: dict) -> "CalibrationMap":
        maps = [LinearLogMap(np.asarray(m["W"], dtype=np.float64), np.asarray(m["b"], dtype=np.float64))
                for m in d["maps"]]
        return cls(d["method"], d["task"] == "regions", maps, float(d.get("eps", LOG_EPS)))

    def temperatures(self) -> List[List[float]]:
        """``1 / W_cc`` per map: the temperature(s) of temperature/vector scaling (diagonal of Dirichlet)."""
        return [[float(1.0 / d) if d else math.inf for d in m.W.diagonal()] for m in self.maps]


def fit_calibration(method: str, samples: "VoxelSamples", spec, lam: float = ODIR_LAMBDA) -> CalibrationMap:
    """Fit a task's map on sampled voxels (see :class:`VoxelSamples`)."""
    if spec.has_regions:
        maps = []
        for c, cls in enumerate(spec.channels):
            two = np.stack([1.0 - samples.p[:, c], samples.p[:, c]], 1)
            maps.append(fit_map(method, two, spec.membership(cls)[samples.labels].astype(np.intp),
                                samples.weights, lam))
    else:
        maps = [fit_map(method, samples.p, samples.labels, samples.weights, lam)]
    sat = saturated_fraction(samples.p if not spec.has_regions else
                             np.concatenate([samples.p, 1.0 - samples.p], 1), samples.weights)
    return CalibrationMap(method, spec.has_regions, maps,
                          info={"n_fit_voxels": int(len(samples.labels)), "saturated_fraction": sat})


@dataclass
class VoxelSamples:
    """Voxels sampled from cases: probabilities ``p`` ``(n, C)`` float32, reference labels ``(n,)``, and weights
    (voxels of the case each sampled voxel stands for), so that weighted sums estimate sums over all voxels."""
    p: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    @classmethod
    def concat(cls, parts: List["VoxelSamples"]) -> "VoxelSamples":
        if not parts:
            return cls(np.zeros((0, 0), np.float32), np.zeros(0, np.intp), np.zeros(0))
        return cls(np.concatenate([s.p for s in parts]), np.concatenate([s.labels for s in parts]),
                   np.concatenate([s.weights for s in parts]))


def sample_case(probabilities: np.ndarray, reference: np.ndarray, spec, per_label: int,
                rng: np.random.Generator) -> VoxelSamples:
    """Stratified sample of one case: up to ``per_label`` voxels of every reference label (ignore label left out),
    each weighted by (voxels of its label) / (sampled of its label) -- an unbiased estimate of the case's NLL that
    does not spend the sample on millions of background voxels."""
    C = spec.n_channels
    P = probabilities.reshape(C, -1)
    Y = np.asarray(reference).reshape(-1)
    ps, ys, ws = [], [], []
    for lab in spec.valid_labels:
        idx = np.flatnonzero(Y == lab)
        if not idx.size:
            continue
        take = idx if idx.size <= per_label else np.sort(rng.choice(idx, per_label, replace=False))
        ps.append(np.clip(P[:, take].T.astype(np.float32), 0.0, 1.0))
        ys.append(np.full(take.size, lab, dtype=np.intp))
        ws.append(np.full(take.size, idx.size / take.size))
    return VoxelSamples(np.concatenate(ps) if ps else np.zeros((0, C), np.float32),
                        np.concatenate(ys) if ys else np.zeros(0, np.intp),
                        np.concatenate(ws) if ws else np.zeros(0))
