"""Induction and head-type scores: TransformerLens semantics, bridge parity, planted heads."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import odd_config
from transformer_lens import head_detector as tl

from labkit.analysis.induction import (
    detection_pattern,
    head_scores,
    in_context_learning_score,
    pattern_score,
    phase_change,
    repeated_random_tokens,
    repeated_segments,
    repeated_tokens_test,
    uniform_second_copy_score,
    uniform_tl_score,
)
from labkit.data.tokenizer import train_tokenizer
from labkit.export import to_hf
from labkit.model import LabModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pretrain"))
import induction_ladder  # noqa: E402


def test_detection_patterns_equal_transformerlens():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (1, 25), generator=g)  # plenty of repeats
    assert torch.equal(
        detection_pattern("previous_token", tokens),
        tl.get_previous_token_head_detection_pattern(tokens),
    )
    assert torch.equal(
        detection_pattern("duplicate_token", tokens),
        tl.get_duplicate_token_head_detection_pattern(tokens),
    )
    assert torch.equal(
        detection_pattern("induction", tokens), tl.get_induction_head_detection_pattern(tokens)
    )


@pytest.mark.parametrize("measure", ["mul", "abs"])
@pytest.mark.parametrize("exclude", [(False, False), (True, False), (False, True), (True, True)])
def test_pattern_score_equals_transformerlens(measure, exclude):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (1, 12), generator=g)
    scores = torch.randn(12, 12, generator=g).masked_fill(
        ~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf")
    )
    pattern = torch.softmax(scores, -1)
    det = tl.get_induction_head_detection_pattern(tokens)
    ours = pattern_score(pattern, det, *exclude, error_measure=measure)
    theirs = tl.compute_head_attention_similarity_score(
        pattern.clone(),
        det,
        exclude_bos=exclude[0],
        exclude_current_token=exclude[1],
        error_measure=measure,
    )
    assert ours == pytest.approx(theirs, abs=1e-6)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = train_tokenizer(
        ["the cat sat on the mat and the dog ran to the cat"] * 30, vocab_size=301
    )
    torch.manual_seed(3)
    model = LabModel(odd_config("mla", n_layers=2)).eval()
    out = to_hf(model, tmp_path_factory.mktemp("induction"), tokenizer=tok)
    return model, out


@pytest.mark.parametrize("kind", ["previous_token", "duplicate_token", "induction"])
def test_scores_agree_with_detect_head_on_the_bridge(exported, kind):
    from transformer_lens.model_bridge import TransformerBridge

    model, out = exported
    bridge = TransformerBridge.boot_transformers(str(out), device="cpu")
    seq = "the cat sat on the mat the cat sat on the mat and the dog"
    tokens = bridge.to_tokens(seq)
    theirs = tl.detect_head(bridge, seq, f"{kind}_head")
    ours = head_scores(model, tokens, kind)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)


def plant_induction_head(model, layer, head, seq_len, offset):
    """Overwrite one head's pattern with perfect induction on [BOS, r, r]; elsewhere, attend BOS."""

    def hook(pattern, hook):
        t = pattern.shape[-1]
        planted = torch.zeros(t, t)
        planted[:, 0] = 1.0
        for q in range(offset + seq_len, t):
            planted[q] = 0
            planted[q, q - seq_len + 1] = 1.0
        pattern[:, head] = planted
        return pattern

    model.add_perma_hook(f"blocks.{layer}.attn.hook_pattern", hook)


def test_planted_induction_head_is_found():
    model = LabModel(odd_config("gqa", n_layers=2)).eval()
    seq_len = 10
    tokens = repeated_random_tokens(
        model.cfg.vocab_size - 1, seq_len, batch=3, seed=2, bos=model.cfg.vocab_size - 1
    )
    plant_induction_head(model, layer=1, head=2, seq_len=seq_len, offset=1)
    result = repeated_tokens_test(model, tokens, seq_len)
    assert result.second_copy_score[1, 2].item() == pytest.approx(1.0)
    assert result.second_copy_score.flatten().topk(2).values[1] < 0.5
    # TransformerLens divides the same mass by every row: the first copy and the sink too
    assert result.tl_score[1, 2].item() == pytest.approx(seq_len / (1 + 2 * seq_len), rel=1e-5)
    scores = head_scores(model, tokens, "induction", exclude_bos=True)
    assert (
        scores[1, 2].item() == pytest.approx(1.0)
        and scores.argmax().item() == 1 * model.cfg.n_heads + 2
    )
    assert result.loss_per_position.shape == (2 * seq_len,)
    model.reset_hooks(including_permanent=True)


def test_repeated_tokens_losses_match_a_direct_computation():
    model = LabModel(odd_config("mla", n_layers=2)).eval()
    tokens = repeated_random_tokens(model.cfg.vocab_size, 8, batch=2, seed=4)
    result = repeated_tokens_test(model, tokens, 8)
    logits = model(tokens)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view(2, -1)
    assert result.loss_first == pytest.approx(nll[:, :7].mean().item(), rel=1e-5)
    assert result.loss_second == pytest.approx(nll[:, 8:].mean().item(), rel=1e-5)


def test_in_context_learning_score():
    model = LabModel(odd_config("gqa", n_layers=1, max_seq_len=64)).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (3, 40))
    score = in_context_learning_score(model, tokens, early=5, late=30)
    logp = torch.log_softmax(model(tokens[:, :31]), -1)
    expected = (
        -logp[:, 29].gather(-1, tokens[:, 30, None]).mean()
        + logp[:, 4].gather(-1, tokens[:, 5, None]).mean()
    )
    assert score == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="more than 30 tokens"):
        in_context_learning_score(model, tokens[:, :20], early=5, late=30)


def test_phase_change():
    tokens = [0, 1000, 2000, 4000, 8000, 16000]
    scores = [0.02, 0.03, 0.05, 0.41, 0.52, 0.55]
    out = phase_change(tokens, scores, threshold=0.3)
    assert out["first_above_threshold"] == 4000 and out["steepest_rise"] == (2000, 4000)
    assert out["crossed_in"] == (2000, 4000) and out["crossed_inside"]
    never = phase_change(tokens, [0.0] * 6)
    assert never["first_above_threshold"] is None and never["crossed_in"] is None
    assert not never["crossed_inside"]
    # above the threshold from the first milestone on, or only at the last: not a phase change
    # observed inside training
    assert not phase_change(tokens, [0.4] * 6)["crossed_inside"]
    assert not phase_change(tokens, [0.1] * 5 + [0.4])["crossed_inside"]


def test_uniform_scores_are_what_uniform_attention_scores():
    seq_len, offset = 8, 1
    tokens = torch.zeros(1, offset + 2 * seq_len, dtype=torch.long)
    q = torch.arange(tokens.shape[1])
    uniform = (q[:, None] >= q[None, :]).float()
    uniform = uniform / uniform.sum(-1, keepdim=True)  # [q, k], causal and uniform
    rows = torch.arange(offset + seq_len, offset + 2 * seq_len)
    expected = uniform[rows, rows - seq_len + 1].mean().item()
    assert uniform_second_copy_score(seq_len, offset) == pytest.approx(expected)
    rows_all = torch.arange(offset + 2 * seq_len)
    tl = uniform[rows, rows - seq_len + 1].sum() / uniform[rows_all].sum()
    assert uniform_tl_score(seq_len, offset) == pytest.approx(tl.item())


def test_copying_score_finds_a_planted_copying_head():
    """Make head 1 of layer 0 an identity-like OV circuit with a tied unembedding: it copies."""
    cfg = odd_config(
        "gqa", n_layers=1, n_heads=4, n_kv_heads=4, d_model=48, head_dim=12, tie_embeddings=True
    )
    model = LabModel(cfg).eval()
    from labkit.analysis.induction import copying_scores

    with torch.no_grad():
        attn = model.blocks[0].attn
        basis = torch.linalg.qr(torch.randn(48, 48))[0][:, :12]  # a 12-dim subspace of the residual
        model.embed.weight.copy_(torch.randn(cfg.vocab_size, 12) @ basis.T)  # embeddings live in it
        attn.v_proj.weight[12:24] = basis.T  # head 1 reads the subspace...
        attn.o_proj.weight[:, 12:24] = basis  # ...and writes it back unchanged
        attn.o_proj.weight[:, :12] = 0
        attn.o_proj.weight[:, 24:] = 0
    scores = copying_scores(model, n_tokens=150)
    assert scores[0, 1] > 0.9
    assert scores[0, [0, 2, 3]].max() < 0.1


def test_repeated_segments_repeat_each_block_at_a_distance_that_varies():
    x = repeated_segments(500, 300, 4, torch.Generator().manual_seed(0), min_half=4)
    assert x.shape == (4, 300) and int(x.min()) >= 0 and int(x.max()) < 500
    distances = set()
    for row in x.tolist():
        i = 0  # walk the complete blocks: the smallest d with row[i:i+d] == row[i+d:i+2d]
        while True:
            d = next((d for d in range(4, 151) if i + 2 * d <= len(row)
                      and row[i : i + d] == row[i + d : i + 2 * d]), None)  # fmt: skip
            if d is None:
                break
            distances.add(d)
            i += 2 * d
    assert len(distances) >= 4, distances  # no single copy distance to learn


@pytest.mark.slow
def test_the_detector_sees_copying_heads_form_in_a_phase_change():
    """A positive control for the detector and the phase-change machinery, at a size that trains
    in a minute: a tiny MLA model trained only on repeated random sequences of one fixed length
    (copying is the sole way to lower the loss) forms heads that attend to the token after the
    earlier copy, in a phase change. The detector must see it: the best head crosses 0.3 between
    two snapshots strictly inside training, the second copy's loss falls by more than a nat, and
    the ICL score drops at the same time. With one fixed period a head attending a fixed distance
    back satisfies all of this, so this controls the detector, not content-based induction: with
    copy distances that vary (`repeated_segments`, pretrain/induction_ladder.py) this controls
    content-based induction."""
    from labkit.config import ModelConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ModelConfig.preset("tiny-mla").replace(init_std=0.08, vocab_size=1000)
    model = LabModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    probe = repeated_random_tokens(1000, 48, batch=8, seed=1)  # held out from training
    steps, scores, drops, icl = [], [], [], []
    for step in range(0, 601):
        if step % 50 == 0:
            model.eval()
            rep = repeated_tokens_test(model, probe, 48)
            steps.append(step)
            scores.append(float(rep.second_copy_score.max()))
            drops.append(rep.loss_first - rep.loss_second)
            icl.append(in_context_learning_score(model, probe, early=8, late=90))
            model.train()
        half = torch.randint(0, 1000, (16, 48))
        x = torch.cat([half, half], 1)
        loss = model(x[:, :-1], targets=x[:, 1:], return_type="loss")
        loss.backward()
        opt.step()
        opt.zero_grad()
    change = phase_change(steps, scores, threshold=0.3)
    assert change["crossed_inside"], (steps, scores)
    before, at = change["crossed_in"]
    assert scores[0] < 0.05 and max(scores) > 0.5  # from near-uniform to sharp induction
    assert drops[-1] > 1.0 and drops[0] < 0.1
    # in-context learning improves, fastest within one snapshot of the crossing
    assert icl[-1] < icl[0] - 1.0, icl
    k = int(torch.tensor(icl).diff().argmin())
    assert abs(steps[k] - before) <= 50, (steps, scores, icl)


def test_the_mechanism_names_a_planted_circuit():
    """A circuit planted in the patterns: head 0 of layer 0 attends to the previous token, head 1
    of layer 1 is the induction head. The mechanism names both (the induction head in a layer
    >= 1, the previous-token head before it), with an ablation fraction inside its interval.
    (Whether ablating removes the copying needs weights that copy: the ladder's runs.)"""
    from labkit.analysis.induction import induction_mechanism

    model = LabModel(odd_config("gqa", n_layers=2)).eval()
    seq_len = 10
    bos = model.cfg.vocab_size - 1
    tokens = repeated_random_tokens(model.cfg.vocab_size - 1, seq_len, batch=24, seed=3, bos=bos)
    plant_induction_head(model, layer=1, head=1, seq_len=seq_len, offset=1)

    def previous(pattern, hook):
        n = pattern.shape[-1]
        planted = torch.diag_embed(torch.ones(n - 1), offset=-1)[:n, :n]
        planted[0, 0] = 1.0
        pattern = pattern.clone()
        pattern[:, 0] = planted
        return pattern

    model.add_perma_hook("blocks.0.attn.hook_pattern", previous)

    found = induction_mechanism(model, tokens, seq_len, n_bootstrap=50)
    assert found["head"] == [1, 1] and found["prev_token_head"] == [0, 0]
    assert found["second_copy_score"] == pytest.approx(1.0)
    assert found["prev_token_score"] == pytest.approx(1.0)
    lo, hi = found["ablation_ci"]
    assert lo <= found["ablation_fraction"] <= hi and found["sequences"] == 24
    model.reset_hooks(including_permanent=True)
    with pytest.raises(ValueError, match="two layers"):
        induction_mechanism(LabModel(odd_config("gqa", n_layers=1)).eval(), tokens, seq_len)


def test_the_icl_curve_has_an_interval_at_every_position():
    from labkit.analysis.induction import in_context_learning_curve

    model = LabModel(odd_config("gqa", n_layers=1, max_seq_len=64)).eval()
    tokens = torch.randint(
        0, model.cfg.vocab_size, (12, 40), generator=torch.Generator().manual_seed(0)
    )
    curve = in_context_learning_curve(
        model, tokens, early=4, positions=[10, 20, 39], n_bootstrap=200
    )
    assert curve["positions"] == [10, 20, 39] and len(curve["ci"]) == 3
    for score, (lo, hi) in zip(curve["scores"], curve["ci"], strict=True):
        assert lo <= score <= hi
    assert curve["scores"][1] == pytest.approx(in_context_learning_score(model, tokens, 4, 20))


def test_the_ladder_trains_each_rung_for_both_attentions_and_keeps_its_section(ci_data, tmp_path):
    """pretrain/induction_ladder.py at CI size: rung (a) and (b) for MLA and GQA, each scored at
    every `--every` steps and at the end, with the mechanism; the section lands next to a
    notebook's, `make figures` keeps it, and bad arguments are one line (exit 2)."""
    from labkit.figures import KEPT_SECTIONS, load_results, save_results

    ci = induction_ladder.REPO / "pretrain" / "configs" / "ci.toml"
    save_results(tmp_path, "induction", {"x": 1})
    args = ["--train-steps", "3", "--every", "2", "--context", "16", "--figures", str(tmp_path),
            "--data", str(ci_data), "--config", str(ci)]  # fmt: skip
    assert induction_ladder.main(args) == 0
    results = load_results(tmp_path)
    assert results["induction"] == {"x": 1}
    for rung in ("a", "b"):
        for attention in ("mla", "gqa"):
            r = results["induction_ladder"][rung][attention]
            assert [c["step"] for c in r["curve"]] == [0, 2, 3]
            assert all(0 <= c["best_head"][0] < 2 for c in r["curve"])  # ci.toml: 2 layers
            assert r["mechanism"]["head"][0] >= 1 and 0 < r["uniform_score"] < 1
            assert ("text_loss" in r["curve"][0]) == (rung == "b")
    assert "induction_ladder" in KEPT_SECTIONS
    # a longer run of one rung under its own key, beside the others
    assert induction_ladder.main([*args, "--steps", "a", "--attention", "gqa", "--name", "a_long",
                                  "--train-steps", "4"]) == 0  # fmt: skip
    ladder = load_results(tmp_path)["induction_ladder"]
    assert set(ladder) == {"a", "b", "a_long"} and ladder["a_long"]["gqa"]["steps"] == 4
    for bad_args in (["--train-steps", "0"], ["--steps", "all", "--name", "x"]):
        with pytest.raises(SystemExit) as bad:
            induction_ladder.main(bad_args)
        assert bad.value.code == 2


def test_analyses_read_no_further_than_the_context_the_run_trained_on(reference):
    """ci.toml trains at 64 tokens in a 256-position model: held-out texts, the repeated random
    tokens and the ICL positions stay within the 64 positions the model has seen."""
    from labkit.run import open_run
    from labkit.study import HeldOut, icl_measure, induction_measure, over_milestones

    run = open_run(reference)
    assert run.context == 64 < run.model.max_seq_len
    rows = over_milestones(
        run.milestones[-1:],
        {
            "longest": lambda at: {"longest": max(map(len, at.text))},
            "induction": induction_measure,
            "icl": lambda at: icl_measure(at, "general", 4, 8, [16, 200], n_bootstrap=10),
        },
        HeldOut("general", 16),
    )
    assert rows["longest"][0]["longest"] == 64
    repeated = rows["induction"][0]
    assert repeated["offset"] + 2 * repeated["seq_len"] <= 64
    assert max(rows["icl"][0]["positions"]) == 63
