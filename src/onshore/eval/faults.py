"""Fault detection measured as Chiang, Russell and Braatz measure it on Tennessee Eastman.

Everything is fitted on normal operation only: a statistic per frame, averaged over a trailing
window, alarms when it crosses a threshold set at a false-alarm rate (the ``1 - far`` quantile
of the statistic on held-out normal episodes). Per fault: the detection rate (the fraction of
frames after the onset that alarm) and the detection delay (frames from the onset to the first
alarm after it; None when it never alarms).

Statistics:

- PCA (scikit-learn-free, a plain SVD of standardised normal data): Hotelling's T² on the
  components that explain ``var`` of the variance, and SPE (the squared residual outside them);
- the model's residual (:func:`model_residuals`): its world head's next-state prediction error
  and its action head's predicted controller output against the controller's, per channel in
  the model's normalised units; :class:`ResidualScale` divides each channel by its spread on
  normal data and averages the squares.

This module is the measurement; ``onshore monitor`` (``serve/monitor.py``) runs the same
statistic live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from onshore.errors import ValidationError

if TYPE_CHECKING:
    from onshore.model.policy import LoadedModel


@dataclass(frozen=True)
class Pca:
    """Standardisation and principal axes fitted on normal data."""

    mean: np.ndarray
    std: np.ndarray
    axes: np.ndarray  # [D, k]
    variances: np.ndarray  # [k]

    @classmethod
    def fit(cls, x: np.ndarray, var: float = 0.9) -> Pca:
        """Components explaining at least ``var`` of the variance of ``x`` [N, D] (normal operation)."""
        if x.ndim != 2 or len(x) < x.shape[1] + 1:
            raise ValidationError(f"PCA needs more normal frames than variables, got {x.shape}")
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 1e-12, std, 1.0)  # a constant channel carries no information
        z = (x - mean) / std
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        lam = s**2 / (len(z) - 1)
        k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), var) + 1)
        return cls(mean, std, vt[:k].T, lam[:k])

    def statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T², SPE) per row of ``x``."""
        z = (x - self.mean) / self.std
        scores = z @ self.axes
        t2 = (scores**2 / self.variances).sum(1)
        spe = ((z - scores @ self.axes.T) ** 2).sum(1)
        return t2, spe


@dataclass(frozen=True)
class ResidualScale:
    """Per-channel centre and spread of a model's residuals on normal data."""

    centre: np.ndarray
    spread: np.ndarray

    @classmethod
    def fit(cls, residuals: np.ndarray) -> ResidualScale:
        spread = residuals.std(0)
        return cls(residuals.mean(0), np.where(spread > 1e-9, spread, 1.0))

    def score(self, residuals: np.ndarray) -> np.ndarray:
        """The mean squared standardised residual per row."""
        return (((residuals - self.centre) / self.spread) ** 2).mean(1)

    def to_json(self) -> dict[str, list[float]]:
        return {"centre": [float(v) for v in self.centre], "spread": [float(v) for v in self.spread]}

    @classmethod
    def from_json(cls, d: dict[str, Any], width: int) -> ResidualScale:
        c, s = np.asarray(d.get("centre"), dtype=np.float64), np.asarray(d.get("spread"), dtype=np.float64)
        if c.shape != (width,) or s.shape != (width,) or not (np.isfinite(c).all() and np.isfinite(s).all()) \
                or (s <= 0).any():
            raise ValidationError(f"a residual scale needs {width} finite centres and positive spreads")
        return cls(c, s)


def trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Causal moving average: frame t averages frames t-window+1..t (fewer at the start)."""
    if window < 1:
        raise ValidationError(f"window must be at least 1 frame, got {window}")
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def threshold(normal: list[np.ndarray], far: float) -> float:
    """The ``1 - far`` quantile of a statistic over normal episodes: its false-alarm rate there is ``far``."""
    if not 0 < far < 1:
        raise ValidationError(f"false-alarm rate must be between 0 and 1, got {far}")
    return float(np.quantile(np.concatenate(normal), 1.0 - far))


def detect(stat: np.ndarray, onset: int, limit: float) -> tuple[float, int | None]:
    """(detection rate after ``onset``, frames to the first alarm at or after it, or None)."""
    after = stat[onset:] > limit
    if not len(after):
        return 0.0, None
    hits = np.flatnonzero(after)
    return float(after.mean()), (int(hits[0]) if len(hits) else None)


def model_residuals(loaded: LoadedModel, embodiment: str, task: str, states: np.ndarray, actions: np.ndarray,
                    batch: int = 256) -> np.ndarray:
    """Per frame t >= 1 of one episode: [next-state error of the prediction made at t-1 (S), predicted
    first action at t minus the controller's (A)], in the model's normalised units; shape [T-1, S+A].

    The model sees what it saw in training: the last ``history`` states up to t (the first state
    repeated before the episode began). Refused: a model trained with action feedback (it would
    need the applied actions as inputs, which is not what a monitor should lean on).
    """
    import torch

    model, cfg = loaded.model, loaded.config
    if cfg.action_feedback:
        raise ValidationError("fault monitoring needs a model without action feedback")
    spec = model.specs[embodiment]
    s = spec.normalise_state(np.asarray(states, dtype=np.float32))
    a = spec.scale_action(np.asarray(actions, dtype=np.float32))
    t_len, k = len(s), cfg.history
    task_vec = torch.from_numpy(loaded.task_vector(task)[None])
    next_pred = np.empty_like(s)
    act_pred = np.empty_like(a)
    with torch.inference_mode():
        for lo in range(0, t_len, batch):
            rows = np.arange(lo, min(lo + batch, t_len))
            hist = s[np.maximum(rows[:, None] - np.arange(k - 1, -1, -1)[None], 0)]
            chunk, nxt = model.predict(embodiment, torch.from_numpy(hist), task_vec.expand(len(rows), -1))
            next_pred[rows] = nxt.float().numpy()
            act_pred[rows] = chunk[:, 0].float().numpy()
    return np.concatenate([next_pred[:-1] - s[1:], act_pred[1:] - a[1:]], axis=1)
