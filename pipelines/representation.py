"""How an image becomes the feature vector the detectors score: the representation stage.

Notation: n images of the declared shape ``(H, W, C)`` (uint8), d features out.

Kinds (``--representation``):

``pixels`` (the default for images without an ``embedding`` column)
    the pixels scaled to [0, 1], average-pooled by the smallest integer factor that
    brings the image to at most ``max_features`` values (28x28 grey: factor 2, 14x14 =
    196 features; 224x224 grey: factor 14, 16x16; 224x224 RGB: factor 23, 9x9x3 = 243,
    the edges that do not fill a block cropped). Nothing is fitted. A BadNets patch of a few pixels
    survives the pooling as a few strongly changed features, which is what the spectral
    and clustering detectors whiten and find. Chosen by measurement on MNIST
    (benchmarks/bench_images.py): a PCA of the pixels fitted on the batch keeps the
    directions of the digits' own variance and drops the corner where a patch sits, so
    every detector lost a 5% patch on it.
``pca``
    the pooled pixels projected on the top ``n_components`` principal directions of a
    bounded, hash-selected sample of the batch (``sample_size`` images).
``surrogate``
    the ReLU activations of the hidden layer of a small scikit-learn ``MLPClassifier``
    (one layer of ``n_components`` units) trained on the same bounded sample with its
    labels: a model trained on the poisoned batch may learn the trigger as a feature
    (Tran et al. 2018; Chen et al. 2018).
``embedding``
    a user's ``embedding`` column (a list of numbers per row, their own model's
    features), used as it is; nothing is decoded for the features.

A :class:`Representation` is a small frozen object of numpy arrays (no pickle is written:
it lives in the job's memory and in Beam's side inputs only); :meth:`Representation.describe`
is what the report shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schemas import ConfigError

KINDS = ("pixels", "pca", "surrogate", "embedding")
#: Most features the pixel representations give (after pooling).
MAX_FEATURES = 256
#: Bounded sample the fitted representations (pca, surrogate) learn from.
SAMPLE_SIZE = 4096
#: Dimension of the fitted representations.
N_COMPONENTS = 64


def pool_factor(shape: tuple[int, int, int], max_features: int = MAX_FEATURES) -> int:
    """Smallest integer factor f with ``(H // f) * (W // f) * C <= max_features``."""
    h, w, c = shape
    f = 1
    while (h // f) * (w // f) * c > max_features and f < max(h, w):
        f += 1
    return f


def pooled_pixels(images: np.ndarray, factor: int) -> np.ndarray:
    """``(n, H, W, C)`` uint8 -> ``(n, (H//f) * (W//f) * C)`` float64 in [0, 1], by f x f averages (edges cropped)."""
    n, h, w, c = images.shape
    x = images[:, : h // factor * factor, : w // factor * factor].astype(np.float32) / 255.0
    if factor > 1:
        x = x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    return x.reshape(n, -1).astype(np.float64)


@dataclass(frozen=True)
class Representation:
    """A fitted representation: ``transform`` maps decoded images to features."""

    kind: str
    image_shape: tuple  # (H, W, C)
    factor: int
    mean: np.ndarray | None = None  # (p,) centring of the pooled pixels (pca)
    weights: np.ndarray | None = None  # (p, d): components (pca) or hidden-layer weights (surrogate)
    bias: np.ndarray | None = None  # (d,) hidden-layer bias (surrogate)
    sample_rows: int = 0
    embedding_dim: int = 0

    @property
    def n_features(self) -> int:
        if self.kind == "embedding":
            return self.embedding_dim
        if self.weights is not None:
            return self.weights.shape[1]
        h, w, c = self.image_shape
        return (h // self.factor) * (w // self.factor) * c

    def names(self) -> tuple[str, ...]:
        """Feature names for reasons and the report (``pixel_r_c_ch`` of the pooled grid, or ``rep_i``)."""
        if self.kind == "pixels":
            h, w, c = self.image_shape
            ph, pw = h // self.factor, w // self.factor
            return tuple(f"pixel_{r * self.factor}_{q * self.factor}" + (f"_{ch}" if c > 1 else "")
                         for r in range(ph) for q in range(pw) for ch in range(c))
        prefix = "embedding" if self.kind == "embedding" else self.kind
        return tuple(f"{prefix}_{i}" for i in range(self.n_features))

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Features (n, d) float64 of decoded images ``(n, H, W, C)`` uint8."""
        x = pooled_pixels(images, self.factor)
        if self.kind == "pca":
            return (x - self.mean) @ self.weights
        if self.kind == "surrogate":
            return np.maximum(x @ self.weights + self.bias, 0.0)
        return x

    def describe(self) -> dict:
        h, w, c = self.image_shape
        text = {
            "pixels": f"pixels scaled to [0, 1], {self.factor}x{self.factor} average-pooled",
            "pca": f"pooled pixels ({self.factor}x{self.factor}) on the top {self.n_features} principal directions of "
                   f"{self.sample_rows} hash-selected images",
            "surrogate": f"hidden ReLU activations ({self.n_features} units) of an MLPClassifier trained on "
                         f"{self.sample_rows} hash-selected images, pooled {self.factor}x{self.factor}",
            "embedding": "the input's embedding column, as given",
        }[self.kind]
        return {"kind": self.kind, "image_shape": [h, w, c], "pool_factor": self.factor, "n_features": self.n_features,
                "sample_rows": self.sample_rows, "description": text}


def fit_representation(kind: str, image_shape, sample: np.ndarray | None = None, labels: np.ndarray | None = None, *,
                       n_components: int = N_COMPONENTS, max_features: int = MAX_FEATURES, seed: int = 0,
                       embedding_dim: int = 0) -> Representation:
    """Fit a representation of ``kind`` on a bounded sample of decoded images ``(n, H, W, C)`` (pca, surrogate)."""
    if kind not in KINDS:
        raise ConfigError(f"--representation: expected one of {', '.join(KINDS)}, got {kind!r}")
    shape = tuple(int(v) for v in image_shape)
    factor = pool_factor(shape, max_features)
    if kind in ("pixels", "embedding"):
        return Representation(kind, shape, factor, embedding_dim=embedding_dim)
    if sample is None or len(sample) < 2:
        raise ConfigError(f"--representation {kind}: needs at least 2 valid images to fit on")
    x = pooled_pixels(sample, factor)
    k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    if kind == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=k, svd_solver="full").fit(x)
        return Representation(kind, shape, factor, mean=pca.mean_.copy(), weights=pca.components_.T.copy(), sample_rows=len(x))
    from sklearn.neural_network import MLPClassifier
    import warnings
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(n_components,), max_iter=50, random_state=seed).fit(x, np.asarray(labels).astype(str))
    return Representation(kind, shape, factor, weights=mlp.coefs_[0].copy(), bias=mlp.intercepts_[0].copy(), sample_rows=len(x))
