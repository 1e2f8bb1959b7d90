"""Representational similarity: CKA (Kornblith et al. 2019), its debiased form (Song et al. 2012's
unbiased HSIC, as used by Nguyen, Raghu & Kornblith 2021), minibatch CKA that streams, and RSA.

Pure functions over arrays: X [n, d1] and Y [n, d2] (torch or NumPy), the same n examples in the
same order. Computation is in float64.

    cka(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)     (linear kernel, centred columns)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Array = Any  # torch.Tensor | np.ndarray


def _t(x: Array) -> torch.Tensor:
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if t.dim() != 2:
        raise ValueError(f"expected a 2-D array [examples, features], got shape {tuple(t.shape)}")
    return t.detach().to(torch.float64)


def _same_n(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y need the same examples: {x.shape[0]} vs {y.shape[0]} rows")


# --------------------------------------------------------------------------- HSIC
def _center(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """tr(K H L H), up to the constant 1/(n-1)^2 that cancels in CKA."""
    return (_center(k) * _center(l)).sum()


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012): unbiased HSIC from Gram matrices (n >= 4)."""
    n = k.shape[0]
    if n < 4:
        raise ValueError("the unbiased HSIC needs at least 4 examples")
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    term = (k * l).sum() + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    term = term - 2.0 / (n - 2) * (ones @ k @ (l @ ones))
    return term / (n * (n - 3))


def linear_gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def rbf_gram(x: torch.Tensor, sigma_frac: float = 1.0) -> torch.Tensor:
    """exp(-||xi - xj||^2 / (2 s^2)) with s = sigma_frac x the median pairwise distance, so the
    kernel is invariant to isotropic scaling of X."""
    sq = torch.cdist(x, x).pow(2)
    median = sq[~torch.eye(len(x), dtype=torch.bool, device=x.device)].median().sqrt()
    s = sigma_frac * median
    return torch.exp(-sq / (2 * s * s))


# --------------------------------------------------------------------------- CKA
def cka(
    X: Array, Y: Array, kernel: str = "linear", debiased: bool = False, sigma_frac: float = 1.0
) -> float:
    """Centred kernel alignment of two representations of the same n examples, in [0, 1]
    (debiased estimates can dip slightly below 0 for unrelated representations)."""
    x, y = _t(X), _t(Y)
    _same_n(x, y)
    if kernel == "linear" and not debiased:
        # Feature space: cost O(n d^2), no n x n matrices (20k tokens at width 768 is cheap).
        x, y = x - x.mean(0), y - y.mean(0)
        cross = (y.T @ x).pow(2).sum()
        return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))
    if kernel == "linear":
        k, l = linear_gram(x), linear_gram(y)
    elif kernel == "rbf":
        k, l = rbf_gram(x, sigma_frac), rbf_gram(y, sigma_frac)
    else:
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    hsic = hsic_unbiased if debiased else hsic_biased
    return float(hsic(k, l) / (hsic(k, k) * hsic(l, l)).sqrt())


class MinibatchCKA:
    """Streaming linear CKA between every layer of A and every layer of B (Nguyen, Raghu &
    Kornblith 2021): unbiased HSIC averaged over minibatches, so memory is bounded by one batch's
    Gram matrices whatever the number of examples.

        acc = MinibatchCKA(n_a, n_b)
        for batch in batches: acc.update([acts_a[l] for l ...], [acts_b[l] for l ...])
        matrix = acc.result()    # [n_a, n_b]
    """

    def __init__(self, n_a: int, n_b: int):
        self.xy = torch.zeros(n_a, n_b, dtype=torch.float64)
        self.xx = torch.zeros(n_a, dtype=torch.float64)
        self.yy = torch.zeros(n_b, dtype=torch.float64)
        self.batches = 0

    def update(self, acts_a: Sequence[Array], acts_b: Sequence[Array]) -> None:
        grams_a = [linear_gram(_t(a)) for a in acts_a]
        grams_b = [linear_gram(_t(b)) for b in acts_b]
        for i, k in enumerate(grams_a):
            self.xx[i] += hsic_unbiased(k, k)
            for j, l in enumerate(grams_b):
                self.xy[i, j] += hsic_unbiased(k, l)
        for j, l in enumerate(grams_b):
            self.yy[j] += hsic_unbiased(l, l)
        self.batches += 1

    def result(self) -> np.ndarray:
        if not self.batches:
            raise ValueError("MinibatchCKA.result() before any update()")
        return (self.xy / (self.xx[:, None] * self.yy[None, :]).sqrt()).numpy()


def cka_matrix(
    acts_a: Sequence[Array],
    acts_b: Sequence[Array] | None = None,
    kernel: str = "linear",
    debiased: bool = False,
) -> np.ndarray:
    """[len(acts_a), len(acts_b)] CKA between every pair of layers (or milestones). With one list,
    the symmetric layer x layer matrix of a single model."""
    symmetric = acts_b is None
    acts_b = acts_a if acts_b is None else acts_b
    out = np.zeros((len(acts_a), len(acts_b)))
    if kernel == "linear" and not debiased:
        # Centre each layer and take its ||Xc^T Xc||_F once; a pair then costs one product.
        ca = [_t(a) - _t(a).mean(0) for a in acts_a]
        cb = ca if symmetric else [_t(b) - _t(b).mean(0) for b in acts_b]
        na = [(x.T @ x).norm() for x in ca]
        nb = na if symmetric else [(y.T @ y).norm() for y in cb]
        for i, x in enumerate(ca):
            for j, y in enumerate(cb):
                if symmetric and j < i:
                    out[i, j] = out[j, i]
                else:
                    _same_n(x, y)
                    out[i, j] = float((y.T @ x).pow(2).sum() / (na[i] * nb[j]))
        return out
    for i, a in enumerate(acts_a):
        for j, b in enumerate(acts_b):
            if symmetric and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = cka(a, b, kernel=kernel, debiased=debiased)
    return out


def layer_identification(matrix: Array) -> dict[str, Any]:
    """Kornblith et al.'s (2019) sanity check for a similarity index, on a [layers_a, layers_b]
    matrix between two networks of the same architecture (e.g. two seeds): for each layer i of A,
    is the most similar layer of B layer i itself? Returns the fraction of layers identified, the
    argmax per layer and the margin of the diagonal over the best other layer (negative where the
    identification fails)."""
    m = _t(matrix).double().numpy()
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"need a square layer x layer matrix, got shape {tuple(m.shape)}")
    best = m.argmax(axis=1)
    n = len(m)
    others = np.where(np.eye(n, dtype=bool), -np.inf, m).max(axis=1) if n > 1 else np.zeros(1)
    return {
        "fraction": float(np.mean(best == np.arange(n))),
        "argmax": [int(b) for b in best],
        "margin": [float(m[i, i] - others[i]) for i in range(n)],
    }


def layer_identification_ci(
    acts_a: Sequence[Array],
    acts_b: Sequence[Array],
    groups: Array,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """`layer_identification` of the linear-CKA matrix between two runs' layers on the same
    tokens, with a 95 % bootstrap interval over documents (`groups`: the document of each token
    row; documents are resampled with replacement, their tokens with them). Each resample's CKA
    comes from per-document sums (X^T Y, column sums, counts), so no resample touches the tokens
    again. `bootstrap_fractions`: every resample's fraction (the same `seed` and `groups` draw
    the same documents, so the fractions of several pairs can be averaged per resample)."""
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    docs, starts = np.unique(groups[order], return_index=True)
    bounds = np.append(starts, len(groups))
    a = [torch.as_tensor(np.asarray(x)[order], dtype=torch.float32) for x in acts_a]
    b = [torch.as_tensor(np.asarray(y)[order], dtype=torch.float32) for y in acts_b]
    counts = torch.as_tensor(np.diff(bounds), dtype=torch.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(docs), np.full(len(docs), 1 / len(docs)), size=n_bootstrap)
    weights = torch.as_tensor(np.vstack([np.ones(len(docs)), draws]), dtype=torch.float64)
    n = weights @ counts  # [1 + boots]: tokens in each resample (the first: the data as is)
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    sums = {
        id(x): weights @ torch.stack([x[s:e].double().sum(0) for s, e in spans]) for x in (*a, *b)
    }  # fmt: skip  [1 + boots, d]: column sums of each resample

    def norms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """||centred X^T Y||_F for every resample (per-document products in fp32, sums fp64)."""
        per_doc = torch.stack([x[s:e].T @ y[s:e] for s, e in spans]).double()
        cross = (weights @ per_doc.flatten(1)).view(-1, x.shape[1], y.shape[1])
        cross -= torch.einsum("bi,bj->bij", sums[id(x)], sums[id(y)]) / n[:, None, None]
        return torch.linalg.matrix_norm(cross)

    self_a, self_b = [norms(x, x) for x in a], [norms(y, y) for y in b]
    cka = torch.stack(
        [
            torch.stack([norms(x, y) ** 2 / (self_a[i] * self_b[j]) for j, y in enumerate(b)], -1)
            for i, x in enumerate(a)
        ],
        -2,
    )  # fmt: skip  [1 + boots, layers_a, layers_b]
    found = layer_identification(cka[0])
    fractions = [layer_identification(m)["fraction"] for m in cka[1:]]
    ci = [float(np.percentile(fractions, q)) for q in (2.5, 97.5)] if fractions else None
    return found | {"ci": ci, "documents": len(docs), "tokens": int(len(groups)),
                    "matrix": cka[0].tolist(), "bootstrap_fractions": fractions}  # fmt: skip


# --------------------------------------------------------------------------- RSA
def rdm(X: Array, metric: str = "correlation") -> np.ndarray:
    """Representational dissimilarity matrix (condensed upper triangle) between the n examples:
    1 - Pearson correlation of their activation patterns, or Euclidean distance."""
    from scipy.spatial.distance import pdist

    if metric not in ("correlation", "euclidean"):
        raise ValueError(f"metric must be 'correlation' or 'euclidean', got {metric!r}")
    return pdist(_t(X).numpy(), metric=metric)


def rsa(X: Array, Y: Array, metric: str = "correlation") -> float:
    """Spearman correlation between the two representations' dissimilarity matrices."""
    from scipy.stats import spearmanr

    x, y = _t(X), _t(Y)
    _same_n(x, y)
    return float(spearmanr(rdm(x, metric), rdm(y, metric)).statistic)
