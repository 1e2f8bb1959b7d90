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
    # the seed baseline: a second seed finds the same planted directions (64 of its 128 rows);
    # the rest of each SAE's rows are its own
    other, _ = train_sae(x[:32_000], SAEConfig(width_multiple=4, k=3, epochs=10, seed=1))
    _, cos = match_features(sae, other)
    assert (cos >= 0.9).mean() >= 0.9 * len(directions) / len(cos)


def test_label_alignment_finds_the_feature_that_fires_where_a_label_holds():
    rng = np.random.default_rng(0)
    n, docs = 4000, np.repeat(np.arange(40), 100)
    label = rng.random(n) < 0.2
    fires = rng.random((n, 6)) < 0.2  # five features that fire at random...
    fires[:, 0] = label  # ...and one exactly where the label holds
    al = label_alignment([LabelSet(fires, {"digit": label.astype(int)}, docs)], shifts=10)
    assert al.best_label[0] == "digit=1" and al.best_f1[0] == pytest.approx(1.0)
    assert al.best_f1[1:].max() < al.null_threshold + 0.05
    assert al.raw_aligned_fraction == pytest.approx(1 / 6)
    assert al.ci[0] <= al.aligned_fraction <= al.ci[1] and al.ci[0] <= 1 / 6 <= al.ci[1]


def test_the_aligned_share_is_corrected_for_features_that_noise_lifts_over_the_threshold():
    """Features that fire at random, with at most a 1 % extra chance where the label holds: in
    the limit of many documents none beats the null threshold, but on 40 documents noise lifts
    some over it, and the resamples lift more (more features sit just below the threshold than
    just above). The reported share is corrected by that measured bias, and lies in its
    interval; the resamples' own 95 % range would not even hold the raw count."""
    rng = np.random.default_rng(0)
    n, docs = 4000, np.repeat(np.arange(40), 100)
    label = rng.random(n) < 0.2
    extra = rng.uniform(0, 0.01, 400)
    fires = (rng.random((n, 400)) < 0.05) | (label[:, None] & (rng.random((n, 400)) < extra))
    al = label_alignment([LabelSet(fires, {"digit": label.astype(int)}, docs)], shifts=10)
    resampled_low = 2 * al.raw_aligned_fraction - al.ci[1]  # the percentile interval's bounds
    assert al.raw_aligned_fraction > 0.05 and resampled_low > al.raw_aligned_fraction
    assert al.ci[0] <= al.aligned_fraction <= al.ci[1] and al.aligned_fraction < 0.05


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


def test_an_sae_on_gqa_keys_splices_in_over_every_head(reference_gqa):
    """hook_k is [batch, pos, kv_heads, d_head]; its SAE reads it flattened over the heads, as
    the collection gives it, and is spliced back in the same shape."""
    from labkit.analysis.activations import collect
    from labkit.run import list_milestones, load
    from labkit.study import eval_sequences

    model, milestone = load(list_milestones(reference_gqa)[-1])
    seqs = eval_sequences(milestone.data_path, "general", 16, 64)
    acts = collect(model, seqs, ["k"], [1], progress=False)["k", 1]
    assert acts.shape[1] == model.cfg.n_kv_heads * model.cfg.d_head
    sae, _ = train_sae(acts, SAEConfig(width_multiple=4, k=8, epochs=4))
    ce = ce_loss_recovered(model, seqs, sae, "blocks.1.attn.hook_k", n_boot=50)
    assert ce.zero_ablated > ce.clean and ce.spliced < ce.zero_ablated


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
    assert all(0 < row["seed_matched_cosine"] <= 1 for row in (first, last))
    # texts cut to the context the run trained on (ci.toml: 64), not the model's max_seq_len
    from labkit.run import list_milestones

    milestone = list_milestones(reference)[-1]
    assert milestone.trained_context == 64 < milestone.model_config.max_seq_len
    assert last["eval_tokens"] <= 16 * 64
    saved = reference / "sae" / last["milestone"] / "kv_latent.1"
    meta = json.loads((saved / "labkit.json").read_text())
    assert meta["checkpoint_sha256"] and meta["train_text_digest"]
    assert (saved / "cfg.json").exists() and (saved / "sae.safetensors").exists()
    assert (saved / "second_seed" / "sae.safetensors").exists()  # the seed baseline's SAE
    # each feature's top activating tokens on the held-out text, strongest first, in context
    contexts = meta["feature_contexts"]
    assert len(contexts) == last["width"] and any(contexts)
    for items in contexts:
        acts = [item["activation"] for item in items]
        assert acts == sorted(acts, reverse=True) and all(a > 0 for a in acts)
        assert all(isinstance(item["token"], str) and item["position"] >= 0 for item in items)
    if labels:
        assert all("top" in feature for feature in last["top_features"])
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


def test_feature_contexts_name_the_token_where_a_feature_fires_and_what_precedes_it():
    """Two documents; feature 0 fires only on token 7 (strongest in the second document): its
    contexts are those tokens with the tokens before them."""
    from labkit.study import feature_contexts

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"t{i}" for i in ids)

    sequences = [[1, 2, 7, 3], [4, 7, 5]]
    tokens = np.concatenate(sequences)
    acts = np.zeros((len(tokens), 4), dtype=np.float32)
    acts[tokens == 7, 0] = [1.0, 2.0]
    acts[:, 1] = 0.5

    class OneHot:  # an "SAE" whose features are the activation's coordinates
        dtype, num_latents = torch.float32, 4

        def encode(self, x):
            values, indices = x.topk(2, dim=1)
            return type("Out", (), {"top_acts": values, "top_indices": indices})

    contexts = feature_contexts(OneHot(), acts, sequences, Tokenizer(), n=3, before=2)
    assert [(c["document"], c["position"], c["token"], c["context"]) for c in contexts[0]] == [
        (1, 1, "t7", "t4"), (0, 2, "t7", "t1 t2")]  # fmt: skip
    assert len(contexts[1]) == 3 and contexts[2] == contexts[3] == []
