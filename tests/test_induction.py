"""Induction and head-type scores: TransformerLens semantics, bridge parity, planted heads."""

import math
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
    uniform_induction_score,
)
from labkit.data.tokenizer import train_tokenizer
from labkit.export import to_hf
from labkit.model import LabModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pretrain"))
import induction_budget  # noqa: E402
import long_control  # noqa: E402


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
    assert result.induction_score[1, 2].item() == pytest.approx(1.0)
    assert result.induction_score.flatten().topk(2).values[1] < 0.5
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


def test_uniform_induction_score_is_what_uniform_attention_scores():
    seq_len, offset = 8, 1
    tokens = torch.zeros(1, offset + 2 * seq_len, dtype=torch.long)
    q = torch.arange(tokens.shape[1])
    uniform = (q[:, None] >= q[None, :]).float()
    uniform = uniform / uniform.sum(-1, keepdim=True)  # [q, k], causal and uniform
    rows = torch.arange(offset + seq_len, offset + 2 * seq_len)
    expected = uniform[rows, rows - seq_len + 1].mean().item()
    assert uniform_induction_score(seq_len, offset) == pytest.approx(expected)


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
    copy distances that vary (`repeated_segments`, pretrain/induction_budget.py) no head of this
    model crosses within 1,000 steps."""
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
            scores.append(float(rep.induction_score.max()))
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


def test_the_induction_budget_calibration_writes_a_kept_results_section(tmp_path, monkeypatch):
    """pretrain/induction_budget.py: a few steps per grid cell for labkit's model and the GPT-2
    reference, its section in results.json next to a notebook's, and `make figures` keeps it."""
    from labkit.figures import KEPT_SECTIONS, load_results, save_results

    monkeypatch.setattr(induction_budget, "GRID", [(64, 16)])
    monkeypatch.setattr(induction_budget, "REFERENCE_GRID", [(64, 16)])
    save_results(tmp_path, "induction", {"x": 1})
    assert induction_budget.main(["--steps", "3", "--every", "2", "--figures", str(tmp_path)]) == 0
    results = load_results(tmp_path)
    assert results["induction"] == {"x": 1}
    section = results["induction_budget"]
    for kind, model in (("cells", "tiny-mla"), ("reference_cells", "transformers GPT-2")):
        cell = section[kind]["vocab64_ctx16"]
        assert cell["model"] == model
        assert [c[0] for c in cell["curve"]] == [0, 2, 3]  # the last step is always scored
        assert cell["batch"] == 2048 // 16 and 0 <= cell["max_score"] <= 1
    assert "induction_budget" in KEPT_SECTIONS
    with pytest.raises(SystemExit) as bad:
        induction_budget.main(["--steps", "0"])
    assert bad.value.code == 2


def test_the_long_control_trains_two_seeds_and_reads_both_controls_at_the_study_budget(
    ci_data, tmp_path, monkeypatch
):
    """pretrain/long_control.py at CI size: two seeds trained side by side through `make paper`'s
    trainer command, then the induction summary per run and the seeds' CKA layer identification
    at every shared milestone, the study's own budget among them; a second call finds both runs
    finished and trains nothing; `make figures` keeps the section."""
    from labkit.figures import KEPT_SECTIONS, load_results

    monkeypatch.setattr(long_control, "STEPS", 4)
    monkeypatch.setattr(long_control, "STUDY_STEPS", 2)
    monkeypatch.setattr(long_control, "SCALE", {
        "config": "pretrain/configs/ci.toml", "preset": "tiny-{attention}",
        "set": [f"data.dir={ci_data}", "checkpoint.every_tokens=1024", "log.tensorboard=false"],
    })  # fmt: skip
    monkeypatch.setattr(long_control, "ICL_EARLY", 8)
    monkeypatch.setattr(long_control, "ICL_LATE", 60)
    monkeypatch.setattr(long_control, "CKA_DOCUMENTS", 8)
    monkeypatch.setattr(long_control, "PROBE_TARGETS", ["domain", "number_value"])
    monkeypatch.setattr(long_control, "PROBE_DOCUMENTS", 60)
    monkeypatch.setattr(long_control, "PROBE_NULLS", 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    figures.mkdir()
    args = ["--runs-dir", str(runs), "--figures", str(figures)]
    assert long_control.main(args) == 0
    section = load_results(figures)["long_control"]
    assert set(section["induction"]) == {"gqa-dense", "gqa-dense-seed2"}
    for summary in section["induction"].values():
        assert summary["milestone_tokens"][-1] == 4 * 1024
        assert 0 <= summary["max_score"] <= 1 and "copy_loss_drop" in summary
    assert set(section["train_minutes"]) == {"gqa-dense", "gqa-dense-seed2"}
    cka = section["cka_layer_identification"]
    assert 2048 in [tokens for tokens, _ in cka["curve"]]  # the study's budget is a milestone
    assert dict(cka["curve"])[2048] == cka["at_study_budget"]
    assert dict(cka["curve"])[4096] == cka["final"] and len(cka["final_argmax"]) == 2
    assert cka["mean_second_half"] == pytest.approx((dict(cka["curve"])[3072] + cka["final"]) / 2)
    probes = section["probes"]
    assert probes["run"] == "gqa-dense"
    for when in ("at_study_budget", "final"):
        assert set(probes[when]["targets"]) == {"domain", "number_value"}
        for target in probes[when]["beats_all_baselines"]:
            assert all(probes[when]["targets"][target]["beats"].values())
    assert "digit_count" in probes["final"]["targets"]["number_value"]["beats"]
    seeds = [(runs / n / "config.json").read_text() for n in ("gqa-dense", "gqa-dense-seed2")]
    assert '"seed": 2024' in seeds[1] and '"seed": 2024' not in seeds[0]
    stamp = (runs / "gqa-dense" / "final.json").stat().st_mtime_ns
    assert long_control.main(args) == 0  # finished runs are not trained again
    assert (runs / "gqa-dense" / "final.json").stat().st_mtime_ns == stamp
    assert "long_control" in KEPT_SECTIONS


def test_the_gpt2_reference_answers_the_induction_test_like_labkits_model():
    """The calibration's reference (transformers' GPT-2) goes through the same
    `repeated_tokens_test` as LabModel: its patterns come back under labkit's hook names, causal
    and normalised, and its logits score the copies."""
    from labkit.analysis.induction import attention_patterns
    from labkit.config import ModelConfig

    cfg = ModelConfig.preset("tiny-mla").replace(vocab_size=64, n_layers=2)
    model = induction_budget.GPT2Reference(cfg, n_ctx=24).eval()
    tokens = repeated_random_tokens(64, 12, batch=2, seed=0)
    patterns = attention_patterns(model, tokens)
    assert patterns.shape == (2, 2, cfg.n_heads, 24, 24)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 2, cfg.n_heads, 24))
    assert torch.triu(patterns, diagonal=1).abs().max() == 0  # causal
    result = repeated_tokens_test(model, tokens, 12)
    assert result.induction_score.shape == (2, cfg.n_heads)
    assert abs(result.loss_first - math.log(64)) < 1.0  # untrained: about uniform over 64 tokens


def test_the_induction_budget_checks_its_output_before_training(tmp_path, monkeypatch, capsys):
    """A damaged results.json or a missing --figures directory is one line and exit 2 before
    any training (not a traceback after half an hour), and the damaged file is left as it was."""
    monkeypatch.setattr(induction_budget, "copy_only_run", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "results.json").write_text("{not json")
    for figures, message in ((tmp_path, "is not valid JSON"), (tmp_path / "no", "no such dir")):
        with pytest.raises(SystemExit) as bad:
            induction_budget.main(["--figures", str(figures)])
        assert bad.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{not json"


def test_the_long_control_checks_its_output_before_training(tmp_path, monkeypatch, capsys):
    """Like the calibration: a damaged results.json or a missing --figures directory is one line
    and exit 2 before an hour of training, and the damaged file is left as it was."""
    monkeypatch.setattr(long_control, "train_all", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "results.json").write_text("[1, 2]")
    for figures, message in ((tmp_path, "holds a JSON list"), (tmp_path / "no", "no such dir")):
        args = ["--figures", str(figures), "--runs-dir", str(tmp_path / "runs")]
        with pytest.raises(SystemExit) as bad:
            long_control.main(args)
        assert bad.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "[1, 2]"


def test_the_mla_ablation_variants_change_one_part_and_write_a_kept_section(tmp_path):
    """pretrain/mla_copy_ablation.py: with every head's RoPE key set to MLA's shared one, the
    rope-per-head variant computes MLA exactly; the latent-free variant has no c_kv and gives its
    patterns to the induction test; a few steps of every variant land in a kept section."""
    import mla_copy_ablation as ablation

    from labkit.config import ModelConfig
    from labkit.figures import KEPT_SECTIONS, load_results
    from labkit.model import rope_tables

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny-mla").replace(vocab_size=64, n_layers=1)
    mla = LabModel(cfg).blocks[0].attn
    per_head = ablation.MLAVariant(cfg, "rope_per_head")
    state = dict(mla.state_dict())
    latent, rope = mla.kv_down.weight.split([mla.rank, mla.rope])
    state["kv_down.weight"] = torch.cat([latent] + [rope] * cfg.n_heads)
    per_head.load_state_dict(state)
    x = torch.randn(2, 10, cfg.d_model)
    cos, sin = rope_tables(mla.rope, torch.arange(10), cfg.rope_theta)
    torch.testing.assert_close(per_head(x, cos, sin), mla(x, cos, sin, None))

    model = ablation.mla_variant("without_latent")(cfg)
    assert not any("kv_up" in n or "kv_norm" in n for n, _ in model.named_parameters())
    result = repeated_tokens_test(model, repeated_random_tokens(64, 8, batch=2, seed=0), 8)
    assert result.induction_score.shape == (1, cfg.n_heads)

    args = ["--steps", "2", "--every", "2", "--seeds", "0", "--figures", str(tmp_path)]
    assert ablation.main(args) == 0
    section = load_results(tmp_path)["mla_copy_ablation"]
    assert set(section["runs"]) == set(ablation.VARIANTS) == set(section["mean_copy_loss_drop"])
    assert [c[0] for c in section["runs"]["mla_without_latent"]["0"]["curve"]] == [0, 2]
    assert section["runs"]["gqa"]["0"]["model"] == "tiny-gqa"
    assert "mla_copy_ablation" in KEPT_SECTIONS
