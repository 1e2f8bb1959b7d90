"""The probing engine: linear (or small MLP) probes on activations, with a control task and
honest statistics.

- Splits are by document (`groups`), so no document contributes to both train and test.
- Classification: standardised logistic regression with cross-validated regularisation
  (scikit-learn); regression: standardised ridge with cross-validated alpha. `kind="mlp"` swaps in a
  one-hidden-layer MLP.
- Control task (Hewitt & Liang 2019): the same probe trained on control labels — a random label per
  token type (or per document) drawn from the label distribution. Selectivity = accuracy - control.
- Results carry the majority-class baseline (R^2 of the mean for regression) and a bootstrap
  confidence interval over test documents.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Task = Literal["classification", "regression"]


@dataclass
class ProbeResult:
    task: str
    accuracy: float  # accuracy, or R^2 for regression
    baseline: float  # majority-class accuracy, or 0 (R^2 of predicting the train mean)
    control_accuracy: float | None
    selectivity: float | None
    ci_low: float
    ci_high: float
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def control_labels(types: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: every distinct type (token id, document, entity) gets one
    random label drawn from the empirical label distribution; each example takes its type's
    label."""
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(types, return_inverse=True)
    drawn = rng.choice(labels, size=len(uniq), replace=True)
    return drawn[inverse]


def _model(task: Task, kind: str, seed: int):
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind not in ("linear", "mlp"):
        raise ValueError(f"probe kind must be 'linear' or 'mlp', got {kind!r}")
    if task == "classification":
        head = (
            LogisticRegressionCV(Cs=6, cv=3, max_iter=500, random_state=seed)
            if kind == "linear"
            else MLPClassifier(
                hidden_layer_sizes=(128,), early_stopping=True, max_iter=300, random_state=seed
            )
        )
    elif task == "regression":
        head = (
            RidgeCV(alphas=np.logspace(-3, 4, 12))
            if kind == "linear"
            else MLPRegressor(
                hidden_layer_sizes=(128,), early_stopping=True, max_iter=500, random_state=seed
            )
        )
    else:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    return make_pipeline(StandardScaler(), head)


def _score(task: Task, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    ss = ((y_true - y_true.mean()) ** 2).sum()
    return float(1 - ((y_true - y_pred) ** 2).sum() / ss) if ss > 0 else 0.0


def train_probe(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    task: Task = "classification",
    control: np.ndarray | None = None,
    kind: str = "linear",
    test_fraction: float = 0.25,
    seed: int = 0,
    n_bootstrap: int = 200,
) -> ProbeResult:
    """Fit on the train documents, score on the held-out documents."""
    from sklearn.model_selection import GroupShuffleSplit
    from threadpoolctl import threadpool_limits

    X, y, groups = np.asarray(X, dtype=np.float32), np.asarray(y), np.asarray(groups)
    if not len(X) == len(y) == len(groups):
        raise ValueError(f"X, y and groups need the same length: {len(X)}, {len(y)}, {len(groups)}")
    if len(np.unique(groups)) < 4:
        raise ValueError("need examples from at least 4 documents to split by document")
    train, test = next(
        GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed).split(
            X, y, groups
        )
    )
    if task == "classification" and len(np.unique(y[train])) < 2:
        raise ValueError("the training documents hold a single class; use more documents")

    def fit_score(labels: np.ndarray) -> tuple[float, np.ndarray]:
        model = _model(task, kind, seed)
        # One BLAS thread: these matrices are small, and OpenBLAS threads spinning on them made
        # a 14-class logistic probe 40x slower on a 2-core machine.
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's deprecation notices
            warnings.simplefilter("ignore", UserWarning)
            model.fit(X[train], labels[train])
        pred = model.predict(X[test])
        return _score(task, labels[test], pred), pred

    accuracy, pred = fit_score(y)
    if task == "classification":
        values, counts = np.unique(y[train], return_counts=True)
        baseline = float(np.mean(y[test] == values[np.argmax(counts)]))
    else:
        baseline = _score(task, y[test], np.full(len(test), y[train].mean()))
    control_acc = fit_score(np.asarray(control))[0] if control is not None else None

    # Bootstrap over test documents, not tokens: tokens of one document are not independent.
    rng = np.random.default_rng(seed)
    test_groups = groups[test]
    uniq = np.unique(test_groups)
    by_group = [np.nonzero(test_groups == g)[0] for g in uniq]
    stats = []
    for _ in range(n_bootstrap):
        pick = np.concatenate([by_group[i] for i in rng.integers(0, len(uniq), len(uniq))])
        stats.append(_score(task, y[test][pick], pred[pick]))
    low, high = np.percentile(stats, [2.5, 97.5])
    return ProbeResult(
        task=task,
        accuracy=accuracy,
        baseline=baseline,
        control_accuracy=control_acc,
        selectivity=(accuracy - control_acc) if control_acc is not None else None,
        ci_low=float(low),
        ci_high=float(high),
        n_train=len(train),
        n_test=len(test),
    )


def probe_model(
    model,
    data,
    site: str,
    layers: list[int],
    kind: str = "linear",
    seed: int = 0,
    progress: bool = False,
) -> dict[int, ProbeResult]:
    """Probe `site` at each layer of `model` on a ProbeData (labkit.analysis.probe_tasks)."""
    from labkit.analysis.activations import collect

    acts = collect(model, data.sequences, [site], layers, select=None, progress=progress)
    # rows of `acts` cover every token; pick (or average) the probed positions per sequence
    starts = np.concatenate([[0], np.cumsum([len(s) for s in data.sequences])])
    index = np.concatenate([starts[i] + np.asarray(p) for i, p in enumerate(data.positions)])
    control = control_labels(data.types, data.labels, seed)
    out = {}
    for layer in layers:
        X = np.asarray(acts[site, layer])[index]
        y, groups, ctl = data.labels, data.groups, control
        if data.document_mean:
            docs = np.unique(groups)
            X = np.stack([X[groups == g].mean(0) for g in docs])
            first = [np.nonzero(groups == g)[0][0] for g in docs]
            y, ctl, groups = y[first], ctl[first], docs
        out[layer] = train_probe(X, y, groups, data.task, ctl, kind, seed=seed)
    return out


def pivot(
    rows: Sequence[dict[str, Any]],
    value: str | Callable[[dict[str, Any]], Any],
    index: str = "layer",
    columns: str = "milestone",
) -> tuple[list, list, np.ndarray]:
    """Rows of `probe_over_milestones` (or any list of dicts) as a grid: (sorted `index` values,
    `columns` values in first-seen order, grid[i, j]). `value` is a key (numbers: a float grid,
    NaN where a row has None or is missing) or a function of a row (an object grid). The CLI's
    probe table and notebook 03's heatmaps read the same grid."""
    ix = sorted({r[index] for r in rows})
    cols = list(dict.fromkeys(r[columns] for r in rows))
    pick = value if callable(value) else (lambda r: r[value])
    cells = {(r[index], r[columns]): pick(r) for r in rows}
    grid = np.empty((len(ix), len(cols)), dtype=object)
    for i, a in enumerate(ix):
        for j, b in enumerate(cols):
            grid[i, j] = cells.get((a, b))
    if not callable(value):
        grid = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    return ix, cols, grid
