"""CKA and RSA: invariances, agreement with direct formulas, and planted signals."""

import numpy as np
import pytest
import torch

from labkit.analysis.similarity import MinibatchCKA, cka, cka_matrix, hsic_unbiased, rsa


@pytest.fixture
def data():
    g = np.random.default_rng(0)
    x = g.normal(size=(300, 40))
    return x, g


def random_orthogonal(d, g):
    q, _ = np.linalg.qr(g.normal(size=(d, d)))
    return q


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_invariances(data, kernel, debiased):
    x, g = data
    for transformed in (x @ random_orthogonal(40, g), 7.5 * x, x + g.normal(size=(1, 40)) * 10):
        assert cka(x, transformed, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-6)


def test_linear_cka_matches_the_direct_gram_formula(data):
    x, g = data
    y = np.tanh(x @ g.normal(size=(40, 25))) + 0.5 * g.normal(size=(300, 25))
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    direct = np.trace(k @ l) / np.sqrt(np.trace(k @ k) * np.trace(l @ l))
    assert cka(x, y) == pytest.approx(direct, rel=1e-10)
    assert cka(torch.tensor(x), torch.tensor(y, dtype=torch.float32)) == pytest.approx(
        direct, rel=1e-6
    )
    # the feature-space and Gram-space routes agree
    xc, yc = x - x.mean(0), y - y.mean(0)
    feature = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert direct == pytest.approx(feature, rel=1e-10)


def test_unrelated_representations_and_the_debiased_estimator():
    g = np.random.default_rng(1)
    x, y = g.normal(size=(200, 500)), g.normal(size=(200, 500))
    biased, unbiased = cka(x, y), cka(x, y, debiased=True)
    assert biased > 0.5  # the known high-dimension bias of plain CKA (Nguyen et al.)
    assert abs(unbiased) < 0.05


def test_unbiased_hsic_matches_the_closed_form():
    g = np.random.default_rng(2)
    k = torch.tensor(g.normal(size=(9, 3))) @ torch.tensor(g.normal(size=(9, 3))).T
    k = k + k.T
    l = torch.tensor(g.normal(size=(9, 9)))
    l = l + l.T
    n = 9
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    one = torch.ones(n, dtype=torch.float64)
    expected = (
        torch.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))
    assert hsic_unbiased(k, l).item() == pytest.approx(expected.item(), rel=1e-10)


def test_cka_orders_planted_similarity(data):
    x, g = data
    noise = g.normal(size=x.shape)
    scores = [cka(x, x + s * noise) for s in (0.1, 1.0, 3.0)]
    assert scores[0] > scores[1] > scores[2]


def test_minibatch_cka_approximates_full_debiased_cka(data):
    x, g = data
    layers_a = [x, np.tanh(x @ g.normal(size=(40, 30)))]
    layers_b = [x @ random_orthogonal(40, g), g.normal(size=(300, 20))]
    acc = MinibatchCKA(2, 2)
    for i in range(0, 300, 100):
        acc.update([a[i : i + 100] for a in layers_a], [b[i : i + 100] for b in layers_b])
    mb = acc.result()
    full = np.array([[cka(a, b, debiased=True) for b in layers_b] for a in layers_a])
    assert mb[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert abs(mb[0, 1]) < 0.1 and abs(mb[1, 1]) < 0.1
    assert np.abs(mb - full).max() < 0.1


def test_cka_matrix_is_symmetric_with_unit_diagonal(data):
    x, g = data
    layers = [x, x @ g.normal(size=(40, 40)), g.normal(size=(300, 10))]
    m = cka_matrix(layers)
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert cka_matrix(layers, layers[:2]).shape == (3, 2)
    direct = np.array([[cka(a, b) for b in layers] for a in layers])
    assert np.allclose(m, direct, rtol=1e-10)  # the shared-work path equals pairwise cka()
    assert np.allclose(
        cka_matrix(layers, kernel="rbf"),
        [[cka(a, b, kernel="rbf") for b in layers] for a in layers],
    )


def test_rsa(data):
    x, g = data
    assert rsa(x, x @ random_orthogonal(40, g), metric="euclidean") == pytest.approx(1.0)
    assert rsa(x, 3 * x + 1) == pytest.approx(1.0)
    assert abs(rsa(x, g.normal(size=(300, 40)))) < 0.1


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="same examples"):
        cka(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="2-D"):
        cka(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="kernel must be"):
        cka(np.ones((5, 2)), np.ones((5, 2)), kernel="poly")


def test_layer_identification_interval_resamples_documents_and_matches_cka():
    """The bootstrap's first matrix is plain linear CKA on all tokens, and resampling documents
    keeps a clear identification (each layer a rotated, noisy copy of the other seed's) at 1 in
    every resample."""
    from labkit.analysis.similarity import layer_identification_ci

    g = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), 25)  # 40 documents of 25 tokens
    base = [g.normal(size=(1000, 16)) for _ in range(3)]
    seed_a = [x + 0.3 * g.normal(size=x.shape) for x in base]
    seed_b = [x @ random_orthogonal(16, g) + 0.3 * g.normal(size=x.shape) for x in base]
    found = layer_identification_ci(seed_a, seed_b, groups, n_bootstrap=100)
    matrix = np.array(found["matrix"])
    for i in range(3):
        for j in range(3):
            assert matrix[i, j] == pytest.approx(cka(seed_a[i], seed_b[j]), abs=1e-6)
    assert found["fraction"] == 1.0 and found["ci"] == [1.0, 1.0]
    assert found["documents"] == 40 and found["tokens"] == 1000
    assert len(found["bootstrap_fractions"]) == 100
