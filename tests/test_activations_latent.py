"""Activation collection and the MLA latent analyses, on small models and planted signals."""

import numpy as np
import pytest
import torch
from conftest import odd_config

from labkit.analysis.activations import collect
from labkit.analysis.latent import (
    direction_ablation_loss,
    kv_variance_explained,
    spectrum,
    truncated_all_layers_loss,
    truncated_latent_loss,
)
from labkit.model import LabModel


@pytest.fixture(scope="module")
def mla():
    torch.manual_seed(5)
    return LabModel(odd_config("mla", n_layers=2)).eval()


def sequences(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def test_collect_equals_run_with_cache(mla):
    seqs = sequences(mla.cfg.vocab_size, [9, 14, 5, 11])
    acts = collect(
        mla,
        seqs,
        sites=["resid_post", "kv_latent", "z"],
        layers=[0, 1],
        batch_size=3,
        progress=False,
    )
    assert acts.rows.shape == (39, 2) and not acts.spilled
    for i, s in enumerate(seqs):
        _, cache = mla.run_with_cache(torch.tensor([s]))
        rows = acts.rows[:, 0] == i
        assert acts.rows[rows, 1].tolist() == list(range(len(s)))
        np.testing.assert_allclose(
            acts["resid_post", 1][rows],
            cache["blocks.1.hook_resid_post"][0].numpy(),
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            acts["kv_latent", 0][rows],
            cache["blocks.0.attn.hook_kv_latent"][0].numpy(),
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            acts["z", 0][rows],
            cache["blocks.0.attn.hook_z"][0].reshape(len(s), -1).numpy(),
            rtol=1e-5,
            atol=1e-5,
        )


def test_collect_selected_positions_and_spill(mla, tmp_path):
    seqs = sequences(mla.cfg.vocab_size, [6, 8, 7])
    last = collect(mla, seqs, ["resid_post"], [1], select=lambda s: [len(s) - 1], progress=False)
    assert last.rows.tolist() == [[0, 5], [1, 7], [2, 6]]
    spilled = collect(
        mla,
        seqs,
        ["resid_post"],
        [1],
        select=lambda s: [len(s) - 1],
        memory_budget_bytes=10,
        spill_dir=tmp_path,
        progress=False,
    )
    assert spilled.spilled and (tmp_path / "resid_post.1.npy").exists()
    np.testing.assert_allclose(np.asarray(spilled["resid_post", 1]), last["resid_post", 1])


def test_collect_errors(mla):
    with pytest.raises(ValueError, match="unknown site 'resid'"):
        collect(mla, [[1, 2]], ["resid"], [0], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        collect(mla, [[1, 2]], ["resid_post"], [5], progress=False)
    gqa = LabModel(odd_config("gqa", n_layers=1))
    with pytest.raises(ValueError, match="no hook 'blocks.0.attn.hook_kv_latent'"):
        collect(gqa, [[1, 2]], ["kv_latent"], [0], progress=False)


def planted_latent(n, r, rank, seed=0):
    """n points spanning exactly `rank` orthonormal directions of R^r with equal variance."""
    g = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(g.normal(size=(r, rank)))
    z = g.normal(size=(n, rank))
    coords, _ = np.linalg.qr(z - z.mean(0))  # centred, uncorrelated, equal variance: exactly
    return 3.0 + np.sqrt(n) * coords @ basis.T, basis


def test_spectrum_of_a_planted_subspace():
    c, basis = planted_latent(400, 22, 3)
    spec = spectrum(c)
    assert spec.participation_ratio == pytest.approx(3.0, rel=1e-6)
    assert spec.entropy_rank == pytest.approx(3.0, rel=1e-6)
    assert spec.variance_share[:3].sum() == pytest.approx(1.0) and spec.singular_values[3] < 1e-8
    found = spec.directions[:, :3]
    assert np.allclose(found @ found.T @ basis, basis, atol=1e-8)  # the same subspace
    assert np.allclose(spec.mean, 3.0)


def test_kv_variance_explained(mla):
    c, _ = planted_latent(300, mla.cfg.kv_lora_rank, 4)
    out = kv_variance_explained(mla, 0, c, ranks=[0, 1, 2, 4, mla.cfg.kv_lora_rank])
    for kind in ("k", "v"):
        assert out[kind][0] == pytest.approx(0.0, abs=1e-9)
        assert out[kind][3] == pytest.approx(1.0, abs=1e-9)  # the planted rank carries everything
        assert out[kind] == sorted(out[kind])


def test_truncation_and_ablation_losses(mla):
    tokens = torch.randint(0, mla.cfg.vocab_size, (4, 20))
    seqs = tokens.tolist()
    c = collect(mla, seqs, ["kv_latent"], [1], progress=False)["kv_latent", 1]
    spec = spectrum(c)
    with torch.no_grad():
        clean = float(mla(tokens, return_type="loss"))
    full = truncated_latent_loss(mla, tokens, 1, spec, [mla.cfg.kv_lora_rank, 0])
    assert full[mla.cfg.kv_lora_rank] == pytest.approx(clean, rel=1e-5)
    assert abs(full[0] - clean) > 1e-4
    # the last direction carries (almost) no variance of these tokens: ablating it changes little
    ablated = direction_ablation_loss(mla, tokens, 1, spec, [0, mla.cfg.kv_lora_rank - 1])
    assert abs(ablated[mla.cfg.kv_lora_rank - 1] - clean) < abs(ablated[0] - clean)


def test_truncating_every_layer_at_once(mla):
    tokens = torch.tensor(sequences(mla.cfg.vocab_size, [24, 24, 24], seed=3))
    acts = collect(mla, tokens.tolist(), ["kv_latent"], [0, 1])
    specs = [spectrum(acts["kv_latent", layer]) for layer in (0, 1)]
    with torch.no_grad():
        clean = float(mla(tokens, return_type="loss"))
    r = mla.cfg.kv_lora_rank
    out = truncated_all_layers_loss(mla, tokens, specs, [0, 1, r])
    assert out[r] == pytest.approx(clean, rel=1e-5)  # full rank: the model itself
    # rank 0 everywhere moves the loss further than rank 0 in one layer alone
    one = truncated_latent_loss(mla, tokens, 1, specs[1], [0])[0]
    assert abs(out[0] - clean) > abs(one - clean) * 0.5 and abs(out[0] - clean) > 1e-4
    assert out[0] != pytest.approx(one, rel=1e-6)
