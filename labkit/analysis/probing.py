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

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
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


def probe_features(
    model,
    data,
    site: str,
    layers: list[int],
    progress: bool = False,
    acts: dict[int, np.ndarray] | None = None,
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Activations at the probed positions of a ProbeData, per layer, and `keep`: the example
    each row stands for (`data.labels[keep]`, `data.groups[keep]`, ...). When the data average a
    document, a row is the document's mean and `keep` its first example. `acts` (layer -> every
    token's activation, sequences concatenated) skips the forward pass."""
    if acts is None:
        acts = all_token_activations(model, data.sequences, site, layers, progress)
    # rows of `acts` cover every token; pick (or average) the probed positions per sequence
    starts = np.concatenate([[0], np.cumsum([len(s) for s in data.sequences])])
    index = np.concatenate([starts[i] + np.asarray(p) for i, p in enumerate(data.positions)])
    keep = np.arange(len(data.labels))
    every_token = len(index) == len(acts[layers[0]]) and bool(
        (index == np.arange(len(index))).all()
    )
    if data.document_mean:  # one mean per document, by sorted runs of its rows
        _, keep = np.unique(data.groups, return_index=True)
        order = np.argsort(data.groups, kind="stable")
        in_order = bool((order == np.arange(len(order))).all())  # as built: documents in turn
        _, starts, counts = np.unique(data.groups[order], return_index=True, return_counts=True)
    features = {}
    for layer in layers:
        # every token of every sequence, in order (a document mean's positions): no copy
        X = np.asarray(acts[layer]) if every_token else np.asarray(acts[layer])[index]
        if data.document_mean:  # float64 sums, one document at a time (20x np.add.reduceat)
            X = X if in_order else X[order]
            ends = starts + counts
            sums = [X[a:b].sum(0, dtype=np.float64) for a, b in zip(starts, ends, strict=True)]
            X = (np.stack(sums) / counts[:, None]).astype(np.float32)
        features[layer] = X
    return features, keep


def all_token_activations(
    model, sequences, site: str, layers: list[int], progress: bool = False, autocast=None
) -> dict[int, np.ndarray]:
    """Every token's activation at `site`, per layer (sequences concatenated)."""
    from labkit.analysis.activations import collect

    acts = collect(model, sequences, [site], layers, select=None, progress=progress,
                   autocast=autocast)  # fmt: skip
    return {layer: np.asarray(acts[site, layer]) for layer in layers}


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
    features, keep = probe_features(model, data, site, layers, progress)
    control = control_labels(data.types, data.labels, seed)[keep]
    y, groups = data.labels[keep], data.groups[keep]
    return {
        layer: train_probe(X, y, groups, data.task, control, kind, seed=seed)
        for layer, X in features.items()
    }


# ------------------------------------------------------------------------- probes with baselines
# The study's probe protocol: split by document into train / validation / test; choose
# the layer (and the regularisation strength) on validation only; report on test with a bootstrap
# CI over test documents; and compare with baselines that each rule out one cheap explanation.
# C (logistic) / alpha (ridge) tried on validation. Standardised activations need one C (fits
# dominate the cost: layers x repeats x baselines); sparse token counts need a range.
STRENGTHS = {"classification": (0.1,), "regression": (1.0, 10.0, 100.0)}
SPARSE_STRENGTHS = {"classification": (0.01, 0.1, 1.0), "regression": (10.0, 100.0, 1e3, 1e4)}


@dataclass
class DocumentSplit:
    """Example indices of the train, validation and test documents (disjoint by document)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_by_document(
    groups: np.ndarray, fractions: tuple[float, float, float] = (0.5, 0.2, 0.3), seed: int = 0
) -> DocumentSplit:
    """Shuffle the documents (deterministically) and cut them into train / validation / test."""
    groups = np.asarray(groups)
    docs = np.unique(groups)
    if len(docs) < 6:
        raise ValueError(f"need examples from at least 6 documents to split by document, got "
                         f"{len(docs)}")  # fmt: skip
    order = np.random.default_rng(seed).permutation(docs)
    n_test = max(1, round(fractions[2] * len(docs)))
    n_val = max(1, round(fractions[1] * len(docs)))
    test_docs, val_docs = order[:n_test], order[n_test : n_test + n_val]
    in_test, in_val = np.isin(groups, test_docs), np.isin(groups, val_docs)
    return DocumentSplit(
        np.nonzero(~in_test & ~in_val)[0], np.nonzero(in_val)[0], np.nonzero(in_test)[0]
    )


def _estimator(task: Task, strength: float, seed: int, sparse: bool = False):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = (
        LogisticRegression(C=strength, max_iter=200, random_state=seed)
        if task == "classification"
        else Ridge(alpha=strength)
    )
    return make_pipeline(StandardScaler(with_mean=not sparse), head)


def _fit(model, X, y):
    from threadpoolctl import threadpool_limits

    # One BLAS thread: small matrices, and spinning OpenBLAS threads cost 40x on 2 cores.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # convergence and deprecation notices
        return model.fit(X, y)


@dataclass
class Selection:
    """The probe chosen on validation: which feature set (layer), which strength, its model."""

    layer: Any
    strength: float
    val_score: float
    model: Any


def select_on_validation(
    train: dict[Any, Any],
    val: dict[Any, Any],
    y_train: np.ndarray,
    y_val: np.ndarray,
    task: Task,
    seed: int = 0,
) -> Selection:
    """Fit every (layer, strength) on the training rows and keep the best on the validation rows.
    Only train and validation arrays come in: the test split cannot influence the choice. Ties go
    to the earlier layer and the stronger regularisation."""
    if task == "classification" and len(np.unique(y_train)) < 2:
        raise ValueError("the training documents hold a single class; use more documents")
    best: Selection | None = None
    for layer, X in train.items():
        sparse = hasattr(X, "tocsr")
        grid = (SPARSE_STRENGTHS if sparse else STRENGTHS)[task]
        strengths = grid if task == "classification" else grid[::-1]
        for strength in strengths:
            model = _fit(_estimator(task, strength, seed, sparse), X, y_train)
            score = _score(task, np.asarray(y_val), model.predict(val[layer]))
            if best is None or score > best.val_score + 1e-12:
                best = Selection(layer, strength, score, model)
    assert best is not None
    return best


def _rows(X, index: np.ndarray):
    return X[index]


def fit_and_test(
    features: dict[Any, Any],
    y: np.ndarray,
    split: DocumentSplit,
    task: Task,
    seed: int = 0,
    y_test: np.ndarray | None = None,
) -> tuple[Selection, np.ndarray, float]:
    """Select on validation, then predict the test rows once: (selection, test predictions,
    test score). `y_test` (default `y`): the labels the test rows are scored against."""
    chosen = select_on_validation(
        {k: _rows(X, split.train) for k, X in features.items()},
        {k: _rows(X, split.val) for k, X in features.items()},
        y[split.train],
        y[split.val],
        task,
        seed,
    )
    pred = chosen.model.predict(_rows(features[chosen.layer], split.test))
    truth = y if y_test is None else y_test
    return chosen, pred, _score(task, truth[split.test], pred)


def bootstrap_ci(
    task: Task,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile interval of the score over resampled test documents (not tokens: tokens
    of one document are not independent). The same seed gives every baseline the same resamples."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    by_group = [np.nonzero(groups == g)[0] for g in uniq]
    stats = []
    for _ in range(n_bootstrap):
        pick = np.concatenate([by_group[i] for i in rng.integers(0, len(uniq), len(uniq))])
        stats.append(_score(task, y_true[pick], y_pred[pick]))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def permutation_null(
    features: dict[Any, Any],
    y: np.ndarray,
    groups: np.ndarray,
    split: DocumentSplit,
    task: Task,
    n_permutations: int = 5,
    seed: int = 0,
) -> list[float]:
    """The null for document-level labels: shuffle the labels across the train and validation
    documents (one label per document), rerun the whole procedure (fit, choose layer on
    validation) and score against the true test labels. What a probe reaches when the label is
    unrelated to the representation, with the same class balance, layers and selection."""
    y, groups = np.asarray(y), np.asarray(groups)
    fit_rows = np.concatenate([split.train, split.val])
    docs, first = np.unique(groups[fit_rows], return_index=True)
    doc_label = y[fit_rows][first]
    if not np.array_equal(doc_label[np.searchsorted(docs, groups[fit_rows])], y[fit_rows]):
        raise ValueError("permutation_null needs one label per document (a document-level label)")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_permutations):
        shuffled = y.copy()
        shuffled[fit_rows] = rng.permutation(doc_label)[np.searchsorted(docs, groups[fit_rows])]
        scores.append(fit_and_test(features, shuffled, split, task, seed, y_test=y)[2])
    return scores


def control_null(
    features: dict[Any, Any],
    y: np.ndarray,
    types: np.ndarray,
    split: DocumentSplit,
    task: Task,
    n_repeats: int = 5,
    seed: int = 0,
) -> list[float]:
    """The null for token / entity / span labels (Hewitt & Liang 2019): control labels (one random
    label per type) through the same procedure, scored against the control labels on test."""
    scores = []
    for r in range(n_repeats):
        control = control_labels(types, np.asarray(y), seed + r)
        if task == "classification" and len(np.unique(control[split.train])) < 2:
            continue
        scores.append(fit_and_test(features, control, split, task, seed)[2])
    return scores


def bag_of_tokens(
    sequences: list[list[int]],
    positions: list[list[int]],
    vocab_size: int,
    document_mean: bool,
):
    """Token counts of what the probe reads, as a scipy CSR matrix (one row per example, in the
    probe's order). A document-mean probe reads every token of the document: its row counts them.
    A position probe reads the causal context up to its position: its row counts the context's
    tokens (first `vocab_size` columns) and marks the token at the position (next columns)."""
    from scipy import sparse

    rows, cols, vals, r = [], [], [], 0
    for seq, pos in zip(sequences, positions, strict=True):
        seq = np.asarray(seq)
        if document_mean:
            ids, counts = np.unique(seq, return_counts=True)
            rows += [r] * len(ids)
            cols += ids.tolist()
            vals += counts.tolist()
            r += 1
            continue
        for p in pos:
            ids, counts = np.unique(seq[: p + 1], return_counts=True)
            rows += [r] * (len(ids) + 1)
            cols += ids.tolist() + [vocab_size + int(seq[p])]
            vals += counts.tolist() + [1]
            r += 1
    width = vocab_size if document_mean else 2 * vocab_size
    return sparse.csr_matrix(
        (np.asarray(vals, np.float32), (rows, cols)), shape=(r, width), dtype=np.float32
    )


def position_features(positions: list[list[int]], max_len: int):
    """One-hot of each example's token position (one row per example, in the probe's order), as
    a scipy CSR matrix: the position-only baseline of a token target."""
    from scipy import sparse

    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in positions])
    flat = np.minimum(flat, max_len - 1)
    ones = np.ones(len(flat), np.float32)
    return sparse.csr_matrix((ones, (np.arange(len(flat)), flat)), shape=(len(flat), max_len))


def digit_count_features(counts: np.ndarray, max_digits: int = 12) -> np.ndarray:
    """A number's digit count as regression features: the count and a one-hot of it."""
    counts = np.asarray(counts, dtype=np.int64)
    onehot = np.eye(max_digits + 1, dtype=np.float32)[np.clip(counts, 0, max_digits)]
    return np.concatenate([counts[:, None].astype(np.float32), onehot], axis=1)


def beats_all(ci_low: float, bars: dict[str, float | None]) -> bool:
    """The probe beats every baseline beyond its CI when its CI's lower end lies above every
    baseline's bar (its CI high, or its point value when it has no CI). A missing baseline
    (None: e.g. no step-0 milestone) cannot be ruled out, so the claim fails."""
    return all(bar is not None and ci_low > bar for bar in bars.values())


def _majority(task: Task, y_train: np.ndarray, y_test: np.ndarray) -> float:
    if task == "classification":
        values, counts = np.unique(y_train, return_counts=True)
        return float(np.mean(y_test == values[np.argmax(counts)]))
    return _score(task, y_test, np.full(len(y_test), y_train.mean()))


def probe_with_baselines(
    features: dict[int, np.ndarray],
    y: np.ndarray,
    groups: np.ndarray,
    task: Task,
    level: Literal["document", "token"],
    *,
    types: np.ndarray | None = None,
    init_features: dict[int, np.ndarray] | None = None,
    bow: Any = None,
    positions: Any = None,
    digit_counts: np.ndarray | None = None,
    split: DocumentSplit | None = None,
    n_null: int = 5,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The probe (layer chosen on validation, scored on test) against its baselines, all on the
    same documents and splits:

    - null: `level="document"`: labels permuted across documents (`permutation_null`);
      `"token"`: the Hewitt-Liang control task on `types` (`control_null`); mean and spread;
    - init_baseline: the same procedure on the step-0 model's `init_features` (None if absent);
    - bow_baseline: logistic (ridge) regression on `bow`, the token counts the probe sees;
    - position_baseline (when `positions`): the same on a one-hot of each token's position;
    - majority_baseline: the training majority class (R^2 of the training mean);
    - digit_count_baseline (when `digit_counts`): ridge on the number's digit count.

    Token targets also get `selectivity` (Hewitt & Liang): the accuracy minus the control
    task's. `beats_all_baselines` applies `beats_all` with bars: the null's largest repeat, the
    CI high of the init, bag-of-tokens, position and digit-count baselines, and the majority's
    point value."""
    y, groups = np.asarray(y), np.asarray(groups)
    split = split or split_by_document(groups, seed=seed)
    test_groups = groups[split.test]

    def ci(pred: np.ndarray) -> list[float]:
        return list(bootstrap_ci(task, y[split.test], pred, test_groups, n_bootstrap, seed))

    chosen, pred, accuracy = fit_and_test(features, y, split, task, seed)
    if level == "document":
        null = permutation_null(features, y, groups, split, task, n_null, seed)
    else:
        if types is None:
            raise ValueError("a token-level null needs the control types")
        null = control_null(features, y, types, split, task, n_null, seed)
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "ci": ci(pred),
        "layer": chosen.layer,
        "val_accuracy": chosen.val_score,
        "null": float(np.mean(null)) if null else None,
        "null_sd": float(np.std(null)) if null else None,
        "null_max": float(np.max(null)) if null else None,
        "null_kind": "permutation" if level == "document" else "control_task",
        "majority_baseline": _majority(task, y[split.train], y[split.test]),
        "n_train_documents": len(np.unique(groups[split.train])),
        "n_val_documents": len(np.unique(groups[split.val])),
        "n_test_documents": len(np.unique(test_groups)),
        "n_test_examples": len(split.test),
        "task": task,
    }
    if level == "token":
        out["selectivity"] = accuracy - out["null"] if null else None
    bars = {"null": out["null_max"], "majority": out["majority_baseline"]}
    baselines = {"init": init_features, "bow": {"bow": bow} if bow is not None else None}
    if positions is not None:
        baselines["position"] = {"position": positions}
    if digit_counts is not None:
        baselines["digit_count"] = {"digits": digit_count_features(digit_counts)}
    for name, feats in baselines.items():
        if feats is None:
            out[f"{name}_baseline"], out[f"{name}_ci"] = None, None
        else:
            sel, base_pred, score = fit_and_test(feats, y, split, task, seed)
            out[f"{name}_baseline"], out[f"{name}_ci"] = score, ci(base_pred)
            if name == "init":
                out["init_layer"] = sel.layer
        bars[name] = out[f"{name}_ci"][1] if out[f"{name}_ci"] else None
    out["beats"] = {k: bool(v is not None and out["ci"][0] > v) for k, v in bars.items()}
    out["beats_all_baselines"] = beats_all(out["ci"][0], bars)
    return out


def layer_scores(
    features: dict[int, np.ndarray], y: np.ndarray, split: DocumentSplit, task: Task, seed: int = 0
) -> dict[int, float]:
    """Test score of every layer, each with its strength chosen on validation: a descriptive
    layer profile for the layer x milestone figure (the reported number is `fit_and_test`'s)."""
    return {
        layer: fit_and_test({layer: X}, y, split, task, seed)[2] for layer, X in features.items()
    }


# ------------------------------------------------------------------ a target's data, built once
@dataclass
class ProbeSet:
    """A probe target's data, built once per data set: the ProbeData, its split by document, its
    bag-of-tokens features and (number_value) the digit count of each number."""

    data: Any
    level: str  # "document" (permutation null) or "token" (Hewitt-Liang control)
    split: Any
    bow: Any
    digit_counts: np.ndarray | None
    vocab_size: int
    positions: Any = None  # token targets: one-hot of each example's position (position baseline)


def _cap_positions(data, per_document: int, seed: int):
    """At most `per_document` probed positions per sequence (a deterministic sample): token-level
    targets read every token, and a few per document carry the signal at a fraction of the cost."""
    if data.document_mean or all(len(p) <= per_document for p in data.positions):
        return data
    from labkit.analysis.probe_tasks import ProbeData

    rng = np.random.default_rng(seed)
    positions, keep, start = [], [], 0
    for pos in data.positions:
        picked = np.sort(rng.choice(len(pos), min(per_document, len(pos)), replace=False))
        positions.append([pos[i] for i in picked])
        keep += (start + picked).tolist()
        start += len(pos)
    keep = np.asarray(keep)
    return ProbeData(data.sequences, positions, data.labels[keep], data.types[keep],
                     data.groups[keep], data.task, data.document_mean)  # fmt: skip


def _digit_counts(data, tokenizer) -> np.ndarray:
    """Digits of the number each example reads (its last token): digits are single tokens, so
    count the digit tokens that end at the position, through '.' and ',' inside the number."""
    counts = []
    for seq, pos in zip(data.sequences, data.positions, strict=True):
        for p in pos:
            n, i = 0, p
            while i >= 0:
                piece = tokenizer.id_to_token(seq[i]).lstrip("Ġ")
                if piece.isdigit():
                    n += len(piece)
                elif piece not in (".", ",") or n == 0:
                    break
                i -= 1
            counts.append(n)
    return np.asarray(counts)


def probe_set(
    spec: dict[str, Any],
    data_dir: str | Path,
    max_len: int,
    positions_per_document: int = 4,
    seed: int = 0,
    bos: int | None = None,
) -> ProbeSet:
    """Build a target's probe data, split and baseline features from a data set, reading at most
    `positions_per_document` positions of a text (a spec's `positions.per_document` overrides
    it). `bos`: the
    token the model was trained to see first (its `bos_token_id`), put before every sequence
    (within `max_len`; the probed positions move with their tokens)."""
    data_dir = Path(data_dir)
    from labkit.analysis.probe_tasks import (
        build_probe_data,
        token_level,
        unseen_text_warning,
        with_bos,
    )
    from labkit.data.build import load_data_tokenizer, load_manifest

    manifest = load_manifest(data_dir)
    tok = load_data_tokenizer(data_dir, manifest)
    warning = unseen_text_warning(spec, manifest)
    if warning:
        print(warning, file=sys.stderr)
    data = build_probe_data(spec, tok, manifest, data_dir, max_len - (bos is not None))
    per_document = spec["positions"].get("per_document", positions_per_document)
    data = _cap_positions(with_bos(data, bos), per_document, seed)
    level = "token" if token_level(spec) else "document"
    groups = np.unique(data.groups) if data.document_mean else data.groups
    vocab = tok.get_vocab_size()
    return ProbeSet(
        data=data,
        level=level,
        split=split_by_document(groups, seed=seed),
        bow=bag_of_tokens(data.sequences, data.positions, vocab, data.document_mean),
        digit_counts=_digit_counts(data, tok) if spec["label"]["kind"] == "number_value" else None,
        vocab_size=vocab,
        positions=position_features(data.positions, max_len) if level == "token" else None,
    )


INIT_MISSING = ("the run has no step-0 milestone (train with `--set checkpoint.save_init=true`): "
                "no init baseline")  # fmt: skip


def targets_with_baselines(
    features: dict[str, tuple[dict[int, np.ndarray], np.ndarray]],
    probe_sets: dict[str, ProbeSet],
    init_features: dict[str, tuple[dict[int, np.ndarray], np.ndarray]] | None,
    n_null: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """`probe_with_baselines` for every target of `probe_sets`, given each target's features
    (and `keep`) at a milestone and, when the run has a step-0 milestone, at step 0 (None: the
    init baseline is None and `init_missing` says why -- never invented)."""
    results = {}
    for name, probes in probe_sets.items():
        (X, keep), data = features[name], probes.data
        out = probe_with_baselines(
            X,
            data.labels[keep],
            data.groups[keep],
            data.task,
            probes.level,
            types=data.types[keep],
            init_features=init_features[name][0] if init_features is not None else None,
            bow=probes.bow,
            positions=probes.positions,
            digit_counts=probes.digit_counts,
            split=probes.split,
            n_null=n_null,
            seed=seed,
        )
        if init_features is None:
            out["init_missing"] = INIT_MISSING
        results[name] = out
    return results


def layer_profile(
    features: dict[str, tuple[dict[int, np.ndarray], np.ndarray]],
    probe_sets: dict[str, ProbeSet],
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per target at one milestone: the test score of every layer (strength chosen on
    validation per layer) and the layer validation picks (the one a reported number uses)."""
    out = {}
    for name, probes in probe_sets.items():
        (X, keep), data = features[name], probes.data
        y = data.labels[keep]
        chosen = fit_and_test(X, y, probes.split, data.task, seed)[0]
        out[name] = {"chosen_layer": chosen.layer,
                     "scores": layer_scores(X, y, probes.split, data.task, seed)}  # fmt: skip
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
