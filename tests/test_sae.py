"""Sparse autoencoders (labkit.analysis.sae, `labkit sae`): a planted-feature positive control,
the label alignment and its null, feature matching, splicing, the library's own format, and
one-line errors."""

import json

import numpy as np
import pytest
import torch

from labkit.analysis.sae import (
    LabelSet,
    SAEConfig,
    ce_loss_recovered,
    encode_dense,
    label_alignment,
    match_features,
    reconstruct,
    reconstruction,
    train_sae,
)
from labkit.cli import main

pytest.importorskip("sparsify")


def planted(n: int = 40_000, d: int = 32, features: int = 64, active: int = 3, seed: int = 0):
    """Activations built from known sparse directions: each token the sum of `active` random
    unit directions (of `features`) with weights in [1, 2], plus noise."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(features, d, generator=g), dim=1)
    idx = torch.stack([torch.randperm(features, generator=g)[:active] for _ in range(n)])
    weights = 1 + torch.rand(n, active, generator=g)
    x = torch.einsum("na,nad->nd", weights, directions[idx])
    return x + 0.01 * torch.randn(n, d, generator=g), directions


def test_an_sae_recovers_planted_sparse_directions():
    """The positive control: >= 90 % of the planted directions have a decoder row within
    cosine 0.9 of them, and the SAE explains the held-out activations."""
    x, directions = planted()
    sae, log = train_sae(x[:32_000], SAEConfig(width_multiple=4, k=3, epochs=10))
    rows = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    best = (directions @ rows.T).max(1).values
    assert (best >= 0.9).float().mean() >= 0.9, best.sort().values[:10]
    held_out = reconstruction(sae, x[32_000:])
    assert held_out.explained_variance > 0.9 and held_out.l0 <= 3
    assert log[-1]["fvu"] < log[0]["fvu"]


def test_label_alignment_finds_the_feature_that_fires_where_a_label_holds():
    rng = np.random.default_rng(0)
    n, docs = 4000, np.repeat(np.arange(40), 100)
    label = rng.random(n) < 0.2
    fires = rng.random((n, 6)) < 0.2  # five features that fire at random...
    fires[:, 0] = label  # ...and one exactly where the label holds
    al = label_alignment([LabelSet(fires, {"digit": label.astype(int)}, docs)], shifts=10)
    assert al.best_label[0] == "digit=1" and al.best_f1[0] == pytest.approx(1.0)
    assert al.best_f1[1:].max() < al.null_threshold + 0.05
    assert al.aligned_fraction == pytest.approx(1 / 6) and al.ci[0] <= 1 / 6 <= al.ci[1]


def test_features_are_matched_across_two_saes_by_decoder_direction():
    x, _ = planted(n=4000)
    a, _ = train_sae(x, SAEConfig(width_multiple=2, k=3, epochs=1))
    b, _ = train_sae(x, SAEConfig(width_multiple=2, k=3, epochs=1))
    perm = torch.randperm(b.num_latents)
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[perm])  # b: a's features in another order
    match, cos = match_features(b, a)
    assert np.array_equal(match, perm.numpy()) and np.allclose(cos, 1, atol=1e-5)


def test_the_saved_sae_loads_in_sparsify_and_splices_in_as_labkits(reference, tmp_path):
    from sparsify import SparseCoder

    from labkit.analysis.activations import collect
    from labkit.analysis.sae import sparsify_module
    from labkit.run import list_milestones, load
    from labkit.study import eval_sequences

    model, milestone = load(list_milestones(reference)[-1])
    seqs = eval_sequences(milestone.data_path, "general", 24, 64)
    acts = collect(model, seqs, ["kv_latent"], [1], progress=False)["kv_latent", 1]
    sae, _ = train_sae(acts, SAEConfig(width_multiple=4, k=4, epochs=2))
    sae.save_to_disk(tmp_path / "sae")
    sparsify_module()  # the library itself loads it (its CPU decoder chosen as labkit does)
    loaded = SparseCoder.load_from_disk(tmp_path / "sae")
    x = torch.as_tensor(acts)
    assert torch.equal(reconstruct(loaded, x), reconstruct(sae, x))
    assert torch.equal(encode_dense(loaded, x), encode_dense(sae, x))
    hook = "blocks.1.attn.hook_kv_latent"
    ours, theirs = (ce_loss_recovered(model, seqs, s, hook, n_boot=50) for s in (sae, loaded))
    assert ours == theirs
    assert ours.zero_ablated > ours.clean and ours.spliced < ours.zero_ablated


@pytest.mark.parametrize(
    "labels", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["measures", "labels"]
)
def test_labkit_sae_train_over_two_milestones(reference, tmp_path, capsys, labels):
    """The command: an SAE per milestone, saved beside it with its hashes, the measures, (slow:
    the label alignment over every label target) and the match to the previous milestone's
    features."""
    out = tmp_path / "sae.json"
    argv = ["sae", "train", "--run", str(reference), "--milestones", "first,last",
            "--site", "kv_latent", "--layer", "1", "--epochs", "2", "--documents", "16",
            "--train-docs", "200", "--json", str(out)] + ([] if labels else ["--no-labels"])  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    first, last = result["milestones"]
    keys = ["l0", "explained_variance", "ce_loss_recovered", "ce_loss_recovered_ci",
            "dead_fraction", "dense_fraction"]  # fmt: skip
    keys += ["label_aligned_fraction", "label_aligned_ci", "top_features"] if labels else []
    for row in (first, last):
        for key in keys:
            assert key in row, key
    assert "matched_cosine" in last and "matched_cosine" not in first
    # texts cut to the context the run trained on (ci.toml: 64), not the model's max_seq_len
    from labkit.run import list_milestones

    milestone = list_milestones(reference)[-1]
    assert milestone.trained_context == 64 < milestone.model_config.max_seq_len
    assert last["eval_tokens"] <= 16 * 64
    saved = reference / "sae" / last["milestone"] / "kv_latent.1"
    meta = json.loads((saved / "labkit.json").read_text())
    assert meta["checkpoint_sha256"] and meta["train_text_digest"]
    assert (saved / "cfg.json").exists() and (saved / "sae.safetensors").exists()
    assert "CE loss recovered" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "/nonexistent/run", "--site", "kv_latent", "--layer", "0"], "no milestones"),
        (["--site", "kv_latent", "--layer", "5"], "layers 0..1"),
        (["--site", "kv_latent", "--layer", "0", "--gqa"], "only in MLA models"),
    ],
)
def test_labkit_sae_errors_are_one_line(reference, reference_gqa, argv, message, capsys):
    if "--gqa" in argv:
        argv = ["--run", str(reference_gqa), *[a for a in argv if a != "--gqa"]]
    elif "--run" not in argv:
        argv = ["--run", str(reference), *argv]
    code = main(["sae", "train", *argv, "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
