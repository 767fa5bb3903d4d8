"""Calibration of class probabilities: expected calibration error, temperature scaling and (binary) isotonic
regression, fitted on validation rows for any member or fusion (they only need ``predict_proba``).

Temperature scaling (Guo et al., 2017, On Calibration of Modern Neural Networks) divides the log-probabilities by
one scalar T fitted by log-loss; it never changes the predicted class. For a fusion, which outputs probabilities and
no logits, the log-probabilities are the logits up to a constant per row, which softmax ignores. Isotonic regression
(Zadrozny & Elkan, 2002) maps a binary classifier's score monotonically; scikit-learn's ``IsotonicRegression`` does it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15


def expected_calibration_error(proba: np.ndarray, y_idx: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins, weighted by their rows.
    For one binary probability column use the two-column form [1 - p, p]."""
    proba = np.asarray(proba, dtype=float)
    conf, pred = proba.max(1), proba.argmax(1)
    right = (pred == np.asarray(y_idx)).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        m = bins == b
        total += m.sum() * abs(right[m].mean() - conf[m].mean())
    return float(total / len(conf))


def reliability(proba: np.ndarray, y_idx: np.ndarray, n_bins: int = 10) -> dict:
    """Per equal-width confidence bin: mean confidence, accuracy and row count (the reliability diagram)."""
    proba = np.asarray(proba, dtype=float)
    conf, right = proba.max(1), (proba.argmax(1) == np.asarray(y_idx)).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    keep = [b for b in range(n_bins) if (bins == b).any()]
    return {"confidence": np.array([conf[bins == b].mean() for b in keep]),
            "accuracy": np.array([right[bins == b].mean() for b in keep]),
            "count": np.array([(bins == b).sum() for b in keep])}


def _log(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=float), 1e-12, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@dataclass
class Calibrator:
    """A fitted map from probabilities to calibrated probabilities: ``method`` 'temperature' (``temperature``) or
    'isotonic' (``isotonic``: a fitted scikit-learn IsotonicRegression on the positive class)."""

    method: str
    temperature: float = 1.0
    isotonic: object = None

    def __call__(self, proba: np.ndarray) -> np.ndarray:
        proba = np.asarray(proba, dtype=float)
        if self.method == "temperature":
            return _softmax(_log(proba) / self.temperature)
        p = np.clip(self.isotonic.predict(proba[:, 1]), 0.0, 1.0)
        return np.stack([1 - p, p], 1)

    def to_json(self) -> dict:
        if self.method == "temperature":
            return {"method": "temperature", "temperature": self.temperature}
        iso = self.isotonic
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Calibrator":
        if d.get("method") == "temperature":
            return cls("temperature", float(d["temperature"]))
        if d.get("method") == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            x, y = np.asarray(d["x"], float), np.asarray(d["y"], float)
            iso.fit(x, y)  # refitting on its own thresholds reproduces the same step function
            return cls("isotonic", isotonic=iso)
        raise ValueError(f"calibrator method {d.get('method')!r} is unknown; valid: ['temperature', 'isotonic']")


def fit_calibrator(proba: np.ndarray, y_idx: np.ndarray, method: str = "temperature") -> Calibrator:
    """Fit ``method`` on validation probabilities ``proba`` (n, k) and label indices ``y_idx``."""
    proba, y_idx = np.asarray(proba, dtype=float), np.asarray(y_idx)
    if method == "temperature":
        logp = _log(proba)

        def nll(log_t: float) -> float:
            z = logp / np.exp(log_t)
            z = z - z.max(1, keepdims=True)
            return float(-(z[np.arange(len(z)), y_idx] - np.log(np.exp(z).sum(1))).mean())

        res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
        return Calibrator("temperature", float(np.exp(res.x)))
    if method == "isotonic":
        if proba.shape[1] != 2:
            raise ValueError(f"method='isotonic' calibrates binary classifiers; these probabilities have "
                             f"{proba.shape[1]} classes; fix: use method='temperature'")
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(proba[:, 1], y_idx == 1)
        return Calibrator("isotonic", isotonic=iso)
    raise ValueError(f"method={method!r} is not valid; valid: ['temperature', 'isotonic']")
