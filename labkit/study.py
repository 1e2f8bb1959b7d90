"""The study layer: the analyses of `labkit.analysis` applied across the milestones of runs.

One loop serves every analysis:

    rows = over_milestones(milestones, measure, text=HeldOut("general", documents=32))

loads each checkpoint once, tokenises each held-out text once per data set, calls `measure` (a
plain function of a `LoadedMilestone`: the milestone, its model and the text) and returns one row
per milestone (`milestone`, `tokens`, and what the measure returned). Several measures share one
load when given as a dict. The measures below are what the notebooks and `labkit` commands use;
the functions named `*_over_milestones` are those measures run by that loop, plus the summary an
analysis needs across milestones (a phase change, CKA to the final state).

Runs and milestones themselves (`find_runs`, `main_runs`, `pick_milestones`, ...) live in
`labkit.run`; the analyses stay pure functions in `labkit.analysis`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from labkit.analysis.probe_tasks import ProbeSpec
from labkit.analysis.probing import ProbeSet
from labkit.model import LabModel
from labkit.run import Milestone, Run, load
from labkit.run.cache import MilestoneCache


# ----------------------------------------------------------------------------------- text inputs
@dataclass(frozen=True)
class HeldOut:
    """The first `documents` documents of a held-out split of the data set a milestone trained
    on, each cut to `max_len` tokens (None: the context the run trained on, else the model's);
    shorter than 4 tokens dropped.
    A model trained with a first token (`bos_token_id`) gets it before every document, within
    `max_len`."""

    split: str = "general"
    documents: int = 32
    max_len: int | None = None


def eval_sequences(
    data_dir: str | Path, split: str, n_docs: int, max_len: int, bos: int | None = None
) -> list[list[int]]:
    """Token sequences of the first documents of a held-out split of a built data set (each
    after `bos` when given, `max_len` tokens at most)."""
    from labkit.data.build import load_data_tokenizer

    path = Path(data_dir) / "text" / f"eval_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a built data set?")
    tok = load_data_tokenizer(data_dir)
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()[:n_docs]]
    start = [] if bos is None else [bos]
    encoded = (start + e.ids for e in tok.encode_batch(docs))
    return [ids[:max_len] for ids in encoded if len(ids) - len(start) >= 4]


# ----------------------------------------------------------------------------- the one loop
@dataclass
class LoadedMilestone:
    """What a measure receives: the milestone, its model (eval mode, tokenizer attached), the
    held-out text asked for (None when no text was asked for) and the milestone's cache."""

    milestone: Milestone
    model: LabModel
    text: list[list[int]] | None

    @property
    def cache(self) -> MilestoneCache:
        if "_cache" not in self.__dict__:
            self.__dict__["_cache"] = MilestoneCache(self.milestone)
        return self.__dict__["_cache"]

    def activations(
        self, sequences: Sequence[Sequence[int]], sites: Sequence[str], layers: Sequence[int],
        autocast: torch.dtype | None = None,
    ) -> dict[tuple[str, int], np.ndarray]:  # fmt: skip
        """Every token's activation at `sites` x `layers` on `sequences` (one forward pass), kept
        beside the milestone: a later analysis, or a rebuild of the figures, of the same weights
        and tokens reads them from disk."""
        from labkit.analysis.activations import collect

        def compute() -> dict[str, np.ndarray]:
            acts = collect(self.model, sequences, sites, layers, progress=False, autocast=autocast)
            return {f"{s}.{i}": np.asarray(acts[s, i]) for s in sites for i in layers}

        inputs = (list(map(list, sequences)), list(sites), list(layers), str(autocast))
        arrays = self.cache.arrays("activations", inputs, compute)
        return {(s, i): arrays[f"{s}.{i}"] for s in sites for i in layers}


Measure = Callable[[LoadedMilestone], "dict[str, Any] | list[dict[str, Any]]"]


def over_milestones(
    milestones: Sequence[Milestone] | Run,
    measure: Measure | Mapping[str, Measure],
    text: HeldOut | None = None,
    progress: bool | str = False,
) -> list[dict[str, Any]] | dict[str, list[dict[str, Any]]]:
    """Each milestone loaded once, `text` tokenised once per data set, `measure` applied: one
    row per milestone (a measure returning a list gives one row per item), each starting with
    the milestone's name and tokens seen. A dict of measures shares each load and gives a dict
    of row lists. `progress`: a progress bar (a string names it)."""
    milestones = milestones.milestones if isinstance(milestones, Run) else list(milestones)
    measures = dict(measure) if isinstance(measure, Mapping) else {"": measure}
    texts: dict[tuple, list[list[int]]] = {}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in measures}
    desc = progress if isinstance(progress, str) else next(iter(measures)) or "milestones"
    for m in tqdm(milestones, desc=desc, disable=not progress, leave=False):
        model, m = load(m)
        seqs = None
        if text is not None:
            max_len = text.max_len or m.context
            bos = model.cfg.bos_token_id
            key = (str(m.data_path), text.split, text.documents, max_len, bos)
            if key not in texts:
                texts[key] = eval_sequences(m.data_path, text.split, text.documents, max_len, bos)
            seqs = texts[key]
        loaded = LoadedMilestone(m, model, seqs)
        for name, fn in measures.items():
            result = fn(loaded)
            for row in result if isinstance(result, list) else [result]:
                rows[name].append({"milestone": m.name, "tokens": m.tokens, **row})
    return rows if isinstance(measure, Mapping) else rows[""]


# ------------------------------------------------------------------------------------- induction
def induction_measure(at: LoadedMilestone, seq_len: int = 32, batch: int = 8) -> dict[str, Any]:
    """On repeated random tokens (after the model's first token, when it has one): each head's
    second-copy score and TransformerLens's detect_head score, the loss on both copies; and the
    previous- and duplicate-token scores on one held-out document (`at.text[0]`), and copying
    scores."""
    from labkit.analysis.induction import (
        copying_scores,
        head_scores,
        repeated_random_tokens,
        repeated_tokens_test,
    )

    model, bos = at.model, at.model.cfg.bos_token_id
    n = min(seq_len, (at.milestone.context - (bos is not None)) // 2)
    tokens = repeated_random_tokens(model.cfg.vocab_size, n, batch, bos=bos)
    rep = repeated_tokens_test(model, tokens, n)
    text = torch.tensor(at.text[0])
    return {
        "seq_len": n,
        "offset": int(bos is not None),
        "second_copy": rep.second_copy_score.tolist(),
        "tl": rep.tl_score.tolist(),
        "max_second_copy": float(rep.second_copy_score.max()),
        "max_tl": float(rep.tl_score.max()),
        "loss_first_copy": rep.loss_first,
        "loss_second_copy": rep.loss_second,
        "copy_loss_drop": rep.loss_first - rep.loss_second,
        "previous_token": head_scores(model, text, "previous_token").tolist(),
        "duplicate_token": head_scores(model, text, "duplicate_token").tolist(),
        "copying": copying_scores(model).tolist(),
    }


def induction_over_milestones(
    milestones: Sequence[Milestone],
    seq_len: int = 32,
    batch: int = 8,
    threshold: float = 0.3,
    progress: bool = False,
) -> dict[str, Any]:
    """`induction_measure` at every milestone, both scores' uniform-attention levels and the
    phase change (the first crossing of `threshold` by the best second-copy score)."""
    from labkit.analysis.induction import (
        phase_change,
        uniform_second_copy_score,
        uniform_tl_score,
    )

    measure = functools.partial(induction_measure, seq_len=seq_len, batch=batch)
    rows = over_milestones(milestones, measure, HeldOut("general", 1), progress and "induction")
    result: dict[str, Any] = {"milestones": rows}
    if rows:
        n, offset = rows[0]["seq_len"], rows[0]["offset"]
        result["uniform_score"] = uniform_second_copy_score(n, offset)
        result["uniform_tl_score"] = uniform_tl_score(n, offset)
    if len(rows) >= 2:
        result["phase_change"] = phase_change(
            [r["tokens"] for r in rows], [r["max_second_copy"] for r in rows], threshold
        )
    return result


def induction_mechanism_at(
    milestone: Milestone, seq_len: int = 32, batch: int = 64, seed: int = 7
) -> dict[str, Any]:
    """`labkit.analysis.induction.induction_mechanism` at one milestone, on `batch` held-out
    repeated random sequences of its own (drawn with `seed`, not the scoring ones)."""
    from labkit.analysis.induction import induction_mechanism, repeated_random_tokens

    model, milestone = load(milestone)
    bos = model.cfg.bos_token_id
    n = min(seq_len, (milestone.context - (bos is not None)) // 2)
    tokens = repeated_random_tokens(model.cfg.vocab_size, n, batch, seed=seed, bos=bos)
    return {"milestone": milestone.name, "tokens": milestone.tokens,
            **induction_mechanism(model, tokens, n)}  # fmt: skip


def induction_summary(induction: dict[str, Any]) -> dict[str, Any]:
    """What a study reports per run from `induction_over_milestones`: the best head's
    second-copy score and TransformerLens score (and their uniform levels), when the
    second-copy score crossed the threshold (None if never) and whether strictly inside
    training, and the copy-loss drop at the last milestone."""
    rows = induction["milestones"]
    change = induction.get("phase_change") or {}
    best = max(rows, key=lambda r: r["max_second_copy"])
    grid = np.asarray(best["second_copy"])
    layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return {
        "max_score": best["max_second_copy"],
        "max_head": [int(layer), int(head)],
        "max_at_tokens": best["tokens"],
        "final_score": rows[-1]["max_second_copy"],
        "tl_max_score": max(r["max_tl"] for r in rows),
        "tl_final_score": rows[-1]["max_tl"],
        "threshold": change.get("threshold"),
        "uniform_score": induction.get("uniform_score"),
        "tl_uniform_score": induction.get("uniform_tl_score"),
        "crossing_tokens": change.get("first_above_threshold"),
        "crossed_in": change.get("crossed_in"),
        "crossed_inside_training": bool(change.get("crossed_inside")),
        "milestone_tokens": [r["tokens"] for r in rows],
        "copy_loss_drop": rows[-1]["copy_loss_drop"],
        "copy_loss_drop_curve": [r["copy_loss_drop"] for r in rows],
        "score_curve": [r["max_second_copy"] for r in rows],
        "tl_score_curve": [r["max_tl"] for r in rows],
    }


def icl_measure(
    at: LoadedMilestone, split: str, documents: int, early: int, late: Sequence[int],
    n_bootstrap: int = 1000,
) -> dict[str, Any]:  # fmt: skip
    """Olsson et al.'s in-context-learning score -- the loss at token position p minus the loss
    at `early` -- at every position p of `late`, on the first `documents` held-out documents
    longer than the last of them, with a bootstrap interval over documents."""
    from labkit.analysis.induction import in_context_learning_curve

    cap = at.milestone.context - 1
    positions = sorted({min(p, cap) for p in late})
    long = [s[: positions[-1] + 1] for s in at.text if len(s) > positions[-1]][:documents]
    if not long:
        raise ValueError(f"no {split} document has more than {positions[-1]} tokens")
    curve = in_context_learning_curve(at.model, torch.tensor(long), early, positions,
                                      n_bootstrap)  # fmt: skip
    return {"documents": len(long), "early": early, **curve}


def icl_over_milestones(
    milestones: Sequence[Milestone],
    split: str = "general",
    documents: int = 300,
    early: int = 8,
    late: Sequence[int] = (16, 32, 48, 63),
    progress: bool = False,
) -> list[dict[str, Any]]:
    """`icl_measure` at every milestone (documents drawn from twice as many as needed)."""
    measure = functools.partial(icl_measure, split=split, documents=documents, early=early,
                                late=late)  # fmt: skip
    text = HeldOut(split, 2 * documents, max(late) + 2)
    return over_milestones(milestones, measure, text, progress and "in-context learning")


def attention_on_repeat(milestone: Milestone, seq_len: int = 16, seed: int = 0) -> dict[str, Any]:
    """Attention patterns [layers, heads, q, k] of one repeated random sequence, with the
    second-copy scores that rank the heads and the uniform-attention level."""
    from labkit.analysis.induction import (
        attention_patterns,
        repeated_random_tokens,
        repeated_tokens_test,
        uniform_second_copy_score,
    )

    model, milestone = load(milestone)
    bos = model.cfg.bos_token_id
    tokens = repeated_random_tokens(model.cfg.vocab_size, seq_len, batch=1, seed=seed, bos=bos)
    with torch.no_grad():
        patterns = attention_patterns(model, tokens)[0].float()
    scores = repeated_tokens_test(model, tokens, seq_len).second_copy_score
    return {"tokens": milestone.tokens, "patterns": patterns.numpy(),
            "second_copy": scores.numpy(),
            "uniform_score": uniform_second_copy_score(seq_len, int(bos is not None))}  # fmt: skip


# ------------------------------------------------------------------------------------ similarity
BLOCK_OUT = "block_out"  # a block's own output, attn_out + mlp_out: what it adds to the stream


def token_documents(sequences: Sequence[Sequence[int]], drop_first: bool = False) -> np.ndarray:
    """The document index of every activation row of `sequences` (concatenated, as
    `activations_measure` returns them), without each document's first token if `drop_first`."""
    return np.concatenate(
        [np.full(len(s) - int(drop_first), i) for i, s in enumerate(sequences)]
    )  # fmt: skip


def activations_measure(
    at: LoadedMilestone,
    sequences: Sequence[Sequence[int]],
    site: str = "resid_post",
    drop_first: bool = False,
) -> dict[str, Any]:
    """{"acts": one [tokens, width] array per layer at `site`} on `sequences` (fp32: CKA and RSA
    compare small differences). `site` is an activation site or BLOCK_OUT (attn_out + mlp_out).
    `drop_first`: leave out each document's first token (with a fixed first token, an attention
    sink, its activations are the same in every document and every model, and dominate CKA)."""
    layers = list(range(at.model.cfg.n_layers))
    parts = ("attn_out", "mlp_out") if site == BLOCK_OUT else (site,)
    acts = at.activations(sequences, parts, layers)
    keep = np.ones(sum(map(len, sequences)), dtype=bool)
    if drop_first:
        keep[np.cumsum([0, *map(len, sequences[:-1])])] = False
    return {"acts": [sum(acts[p, i] for p in parts)[keep] for i in layers]}


def layer_activations(
    milestone: Milestone,
    sequences: Sequence[Sequence[int]],
    site: str = "resid_post",
    drop_first: bool = False,
) -> list[np.ndarray]:
    """One [tokens, width] array per layer at `site` on `sequences`, at one milestone."""
    measure = functools.partial(activations_measure, sequences=sequences, site=site,
                                drop_first=drop_first)  # fmt: skip
    return over_milestones([milestone], measure)[0]["acts"]


def seed_layer_identification(
    runs: Sequence[Run],
    sequences: Sequence[Sequence[int]],
    site: str = "resid_post",
    drop_first: bool = True,
    n_bootstrap: int = 500,
) -> dict[str, Any]:
    """Kornblith et al.'s control for one cell's seeds: for every pair of runs, the share of
    layers whose most CKA-similar layer in the other run is the same layer, at their final
    milestones, with a 95 % bootstrap interval over documents; and the mean over pairs with its
    interval (every pair resampled with the same documents)."""
    from itertools import combinations

    from labkit.analysis.similarity import layer_identification_ci

    groups = token_documents(sequences, drop_first)
    acts = {r.name: layer_activations(r.milestones[-1], sequences, site, drop_first) for r in runs}
    pairs, draws = [], []
    for a, b in combinations(runs, 2):
        found = layer_identification_ci(acts[a.name], acts[b.name], groups, n_bootstrap)
        draws.append(found.pop("bootstrap_fractions"))
        pairs.append({"runs": [a.name, b.name]} | found)
    mean = np.mean(draws, axis=0) if draws else np.array([])
    return {
        "site": site,
        "fraction": float(np.mean([p["fraction"] for p in pairs])) if pairs else None,
        "ci": [float(np.percentile(mean, 2.5)), float(np.percentile(mean, 97.5))]
        if len(mean) else None,
        "pairs": pairs,
        "documents": len(sequences),
        "tokens": int(len(groups)),
        "first_token_dropped": drop_first,
    }  # fmt: skip


def cka_to_final(
    milestones: Sequence[Milestone],
    sequences: Sequence[Sequence[int]],
    site: str = "resid_post",
    progress: bool = False,
    drop_first: bool = False,
) -> dict[str, Any]:
    """CKA of each layer at each milestone to the same layer at the last milestone, and the
    last milestone's layer x layer CKA (`drop_first`: as in `activations_measure`)."""
    from labkit.analysis.similarity import cka, cka_matrix

    measure = functools.partial(activations_measure, sequences=sequences, site=site,
                                drop_first=drop_first)  # fmt: skip
    rows = over_milestones(milestones, measure, progress=progress and "CKA to final")
    final = rows[-1]["acts"]
    return {
        "rows": [
            {
                "milestone": r["milestone"],
                "tokens": r["tokens"],
                "cka": [cka(a, b) for a, b in zip(r["acts"], final, strict=True)],
            }
            for r in rows
        ],  # fmt: skip
        "within_final": cka_matrix(final).tolist(),
    }


def compare_runs(
    pairs: Sequence[tuple[Milestone, Milestone]],
    sequences: Sequence[Sequence[int]],
    site: str = "resid_post",
    progress: bool = False,
    drop_first: bool = False,
) -> list[dict[str, Any]]:
    """For matched milestones of two runs: layer x layer CKA (rows: first run) and RSA per layer
    (correlation RDMs over a subsample of tokens); `drop_first` as in `activations_measure`."""
    from labkit.analysis.similarity import cka_matrix, rsa

    measure = functools.partial(activations_measure, sequences=sequences, site=site,
                                drop_first=drop_first)  # fmt: skip
    rows = []
    for a, b in tqdm(pairs, desc="compare runs", disable=not progress, leave=False):
        acts_a, acts_b = (r["acts"] for r in over_milestones([a, b], measure))
        keep = np.random.default_rng(0).permutation(len(acts_a[0]))[:500]
        rows.append({
            "milestone": a.name, "tokens": a.tokens,
            "cka": cka_matrix(acts_a, acts_b).tolist(),
            "rsa": [rsa(x[keep], y[keep]) for x, y in zip(acts_a, acts_b, strict=True)],
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------- latent
LATENT_RANKS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def latent_measure(at: LoadedMilestone) -> list[dict[str, Any]]:
    """Per layer of an MLA model: the c_kv spectrum, k/v variance carried by the top latent
    directions, the loss when c_kv is truncated to rank k, and single-direction ablations of the
    top principal directions and, as their control, of random directions."""
    from labkit.analysis.latent import (
        direction_ablation_loss,
        kv_variance_explained,
        random_direction_ablation_loss,
        spectrum,
        truncated_all_layers_loss,
        truncated_latent_loss,
    )

    model, seqs = at.model, at.text
    if model.cfg.attention != "mla":
        raise ValueError(f"{at.milestone.path} is a {model.cfg.attention.upper()} model: c_kv "
                         "needs MLA")  # fmt: skip
    layers = list(range(model.cfg.n_layers))
    acts = at.activations(seqs, ["kv_latent"], layers)  # fp32: spectra of small directions
    width = min(len(s) for s in seqs)
    tokens = torch.tensor([s[:width] for s in seqs])
    r = model.cfg.kv_lora_rank
    ranks = sorted({k for k in LATENT_RANKS if k < r} | {r})
    specs = [spectrum(np.asarray(acts["kv_latent", layer])) for layer in layers]
    all_layers = truncated_all_layers_loss(model, tokens, specs, ranks)
    rows = []
    for layer in layers:
        spec = specs[layer]
        rows.append({
            "layer": layer,
            "participation_ratio": spec.participation_ratio,
            "entropy_rank": spec.entropy_rank,
            "singular_values": spec.singular_values.tolist(),
            "ranks": ranks,
            "kv_variance_explained": kv_variance_explained(
                model, layer, acts["kv_latent", layer], ranks
            ),
            "truncated_loss": truncated_latent_loss(model, tokens, layer, spec, ranks),
            "truncated_all_layers_loss": all_layers,
            "direction_ablation_loss": direction_ablation_loss(
                model, tokens, layer, spec, list(range(min(3, r)))
            ),
            "random_direction_ablation_loss": random_direction_ablation_loss(
                model, tokens, layer, spec
            ),
        })  # fmt: skip
    return rows


def latent_over_milestones(
    milestones: Sequence[Milestone],
    split: str = "general",
    documents: int = 32,
    max_len: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """`latent_measure` at every MLA milestone: one row per milestone and layer."""
    text = HeldOut(split, documents, max_len)
    return over_milestones(milestones, latent_measure, text, progress and "c_kv latent")


def logit_lens_measure(at: LoadedMilestone) -> dict[str, Any]:
    """The logit lens's next-token loss at every residual stream on held-out documents
    (TransformerLens's accumulated_resid through ln_final and W_U)."""
    from labkit.analysis.lens import logit_lens_loss

    width = min(len(s) for s in at.text)
    losses, labels = logit_lens_loss(at.model, torch.tensor([s[:width] for s in at.text]))
    return {"labels": labels, "loss": losses}


def logit_lens_over_milestones(
    milestones: Sequence[Milestone],
    split: str = "general",
    documents: int = 16,
    max_len: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    text = HeldOut(split, documents, max_len)
    return over_milestones(milestones, logit_lens_measure, text, progress and "logit lens")


def kv_patching(
    milestone: Milestone,
    split: str = "general",
    documents: int = 8,
    length: int = 24,
    last: int = 4,
) -> dict[str, Any]:
    """Which layer's c_kv, at which position, carries the context an MLA model uses. Clean:
    held-out windows of `length` tokens; corrupted: the same windows with their first half taken
    from other documents. Metric: the mean log-probability of the clean window's last `last`
    tokens. Every (layer, position) of c_kv is patched from clean into corrupted with
    TransformerLens's patching; `recovery` = (patched - corrupted) / (clean - corrupted)."""
    from labkit.analysis.latent import kv_latent_patching

    model, milestone = load(milestone)
    if model.cfg.attention != "mla":
        raise ValueError(f"{milestone.path} is a {model.cfg.attention.upper()} model: c_kv "
                         "needs MLA")  # fmt: skip
    seqs = eval_sequences(milestone.data_path, split, 2 * documents, length,
                          model.cfg.bos_token_id)  # fmt: skip
    seqs = [s for s in seqs if len(s) == length]
    if len(seqs) < 2:
        raise ValueError(f"fewer than two {split} documents of {length} tokens")
    clean = torch.tensor(seqs[: max(1, len(seqs) // 2)])
    donors = torch.tensor(seqs[len(clean) : 2 * len(clean)]).roll(1, dims=0)
    clean = clean[: len(donors)]
    corrupted = clean.clone()
    corrupted[:, : length // 2] = donors[:, : length // 2]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, -last - 1 : -1].float(), dim=-1)
        return logp.gather(-1, clean[:, -last:, None]).mean()

    with torch.no_grad():
        clean_value, corrupted_value = metric(model(clean)).item(), metric(model(corrupted)).item()
    patched = kv_latent_patching(model, clean, corrupted, metric)
    return {
        "milestone": milestone.name,
        "tokens": milestone.tokens,
        "clean": clean_value,
        "corrupted": corrupted_value,
        "patched": patched.tolist(),
        "recovery": ((patched - corrupted_value) / (clean_value - corrupted_value)).tolist(),
        "corrupted_positions": length // 2,
        "documents": len(clean),
    }


# ---------------------------------------------------------------------------------------- probes
def probe_measure(
    at: LoadedMilestone, spec: ProbeSpec, data: Any, site: str, layers: Sequence[int] | None,
    kind: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Probe rows (accuracy or R^2, control accuracy, selectivity) for every layer."""
    from labkit.analysis.activations import check_site_layers
    from labkit.analysis.probing import probe_model

    chosen = check_site_layers(at.model.cfg, site, layers)
    return [{"target": spec.get("name"), "site": site, "probe": kind, "layer": layer,
             "task": data.task, "examples": data.n_examples, **r.to_dict()}
            for layer, r in probe_model(at.model, data, site, chosen, kind).items()]  # fmt: skip


def probe_over_milestones(
    milestones: Sequence[Milestone],
    spec: ProbeSpec | dict[str, Any],
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
    kind: str = "linear",
    data_dir: str | Path | None = None,
    progress: bool = False,
    max_len: int | None = None,
) -> list[dict[str, Any]]:
    """Probe rows for every layer x milestone. The probe data are built once, from the data set
    of the first milestone unless given, each document cut to `max_len` tokens (None: the
    context the run trained on, else the model's); rows keep the layer-first order of each
    milestone."""
    import sys

    from labkit.analysis.probe_tasks import build_probe_data, unseen_text_warning, with_bos
    from labkit.data.build import load_data_tokenizer, load_manifest

    spec = ProbeSpec.parse(spec)
    root = Path(data_dir) if data_dir else milestones[0].data_path
    manifest = load_manifest(root)
    warning = unseen_text_warning(spec, manifest)
    if warning:
        print(warning, file=sys.stderr)
    model_cfg = milestones[0].model_config
    bos = model_cfg.bos_token_id
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must be >= 2 tokens, got {max_len}")
    context = max_len or milestones[0].context
    if context > model_cfg.max_seq_len:
        raise ValueError(f"max_len {context} exceeds the model's max_seq_len "
                         f"{model_cfg.max_seq_len}")  # fmt: skip
    tok = load_data_tokenizer(root, manifest)
    data = with_bos(build_probe_data(spec, tok, manifest, root, context - (bos is not None)), bos)
    measure = functools.partial(probe_measure, spec=spec, data=data, site=site, layers=layers,
                                kind=kind)  # fmt: skip
    return over_milestones(milestones, measure, progress=progress and f"probe {spec.name}")


def probe_features_measure(
    at: LoadedMilestone, probe_sets: dict[str, ProbeSet], site: str, autocast=torch.bfloat16
) -> dict[str, Any]:
    """{"features": each target's probe features (and `keep`)} at one milestone, with one forward
    pass per distinct set of documents (targets of one `stream` share it), under bf16 autocast as
    the models were trained (a probe's accuracy is robust to it). Each target's features are kept
    beside the milestone (labkit.run.cache): a rebuild reads them instead of running the model."""
    from labkit.analysis.probing import all_token_activations, probe_features

    model = at.model
    layers = list(range(model.cfg.n_layers))
    keys = {name: hash(tuple(map(tuple, p.data.sequences))) for name, p in probe_sets.items()}
    out, streams = {}, {}

    def stream(name: str) -> dict[int, np.ndarray]:
        # targets grouped by their documents: each stream's forward pass once, one in memory
        if keys[name] not in streams:
            streams.clear()
            streams[keys[name]] = all_token_activations(
                model, probe_sets[name].data.sequences, site, layers, autocast=autocast
            )
        return streams[keys[name]]

    for name in sorted(probe_sets, key=lambda n: (keys[n], n)):
        data = probe_sets[name].data

        def compute(name=name, data=data) -> dict[str, np.ndarray]:
            feats, keep = probe_features(model, data, site, layers, acts=stream(name))
            return {"keep": keep, **{f"layer{i}": x for i, x in feats.items()}}

        inputs = (data.sequences, [list(map(int, p)) for p in data.positions], data.document_mean,
                  site, layers, str(autocast))  # fmt: skip
        arrays = at.cache.arrays("probe_features", inputs, compute)
        out[name] = ({i: arrays[f"layer{i}"] for i in layers}, arrays["keep"])
    return {"features": {name: out[name] for name in probe_sets}}


def probe_against_baselines(
    final: Milestone,
    init: Milestone | None,
    probe_sets: dict[str, ProbeSet],
    site: str = "resid_post",
    n_null: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Every target of `probe_sets` (from `labkit.analysis.probing.probe_set`, shared between
    runs trained on the same data set) probed at milestone `final` against its baselines
    (`labkit.analysis.probing.targets_with_baselines`). `init` is the run's step-0 milestone:
    its probe is the init baseline; None when the run has none."""
    from labkit.analysis.probing import targets_with_baselines

    measure = functools.partial(probe_features_measure, probe_sets=probe_sets, site=site)
    rows = over_milestones([final] + ([init] if init is not None else []), measure)
    init_features = rows[1]["features"] if init is not None else None
    results = targets_with_baselines(rows[0]["features"], probe_sets, init_features, n_null, seed)
    for name, out in results.items():
        out.update(target=name, milestone=final.name, tokens=final.tokens, site=site,
                   init_milestone=init.name if init is not None else None)  # fmt: skip
    return results


def probe_layers_over_milestones(
    milestones: Sequence[Milestone],
    probe_sets: dict[str, ProbeSet],
    site: str = "resid_post",
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Per target, the test score of every layer at every milestone (strength chosen on
    validation per layer): the descriptive layer x milestone profile, plus the layer that
    validation picks (the one a reported number would use)."""
    from labkit.analysis.probing import layer_profile

    measure = functools.partial(probe_features_measure, probe_sets=probe_sets, site=site)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in probe_sets}
    for row in over_milestones(milestones, measure):
        for name, profile in layer_profile(row["features"], probe_sets, seed).items():
            rows[name].append({"milestone": row["milestone"], "tokens": row["tokens"], **profile})
    return rows


# ------------------------------------------------------------------------ sparse autoencoders
# Ground-truth labels an SAE's features are read against: token facts (a digit, seen before in
# the text, distance to its last occurrence, bracket depth), an entity's attribute at its
# mention, the document's format and domain at every token; each token's position is added.
SAE_LABEL_TARGETS = ("digit", "seen_before", "since_last", "code_bracket_depth",
                     "person_occupation", "format", "domain")  # fmt: skip
POSITION_BUCKETS = (1, 4, 16, 64)  # position 0, 1-3, 4-15, 16-63, 64 and later
NEW_FEATURE_COSINE = 0.7  # a feature whose matched decoder direction is below this is new
SECOND_SEED = "second_seed"  # the seed-baseline SAE, inside its milestone's SAE directory


def train_sequences(data_dir: str | Path, n_docs: int, max_len: int, bos: int | None = None):
    """Token sequences of the first `n_docs` training documents of a built data set (after
    `bos` when given, `max_len` tokens at most); only those lines are read."""
    from labkit.data.build import load_data_tokenizer

    path = Path(data_dir) / "text" / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a built data set?")
    docs = []
    with path.open() as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if len(docs) == n_docs:
                break
    start = [] if bos is None else [bos]
    encoded = (start + e.ids for e in load_data_tokenizer(data_dir).encode_batch(docs))
    return [ids[:max_len] for ids in encoded if len(ids) - len(start) >= 4]


def sae_label_data(
    data_dir: str | Path, max_len: int, bos: int | None, targets=SAE_LABEL_TARGETS
) -> dict[str, Any]:
    """The ProbeData of each label target (built once per data set; a target the data set
    cannot give is left out and said why)."""
    import sys

    from labkit.analysis.probe_tasks import build_probe_data, load_probe_spec, with_bos
    from labkit.data.build import load_data_tokenizer, load_manifest

    manifest = load_manifest(data_dir)
    tok = load_data_tokenizer(data_dir, manifest)
    out = {}
    for name in targets:
        try:
            spec = load_probe_spec(name)
            out[name] = with_bos(build_probe_data(spec, tok, manifest, Path(data_dir),
                                                  max_len - (bos is not None)), bos)  # fmt: skip
        except ValueError as err:
            print(f"note: SAE labels: {name} left out ({err})", file=sys.stderr)
    return out


def _label_values(labels: np.ndarray) -> np.ndarray:
    """Categorical values of a label: a numeric label with many values in quartiles."""
    if labels.dtype.kind in "fiu" and len(np.unique(labels)) > 8:
        return np.searchsorted(np.quantile(labels, [0.25, 0.5, 0.75]), labels)
    return labels


def sae_dir(milestone: Milestone, site: str, layer: int) -> Path:
    """runs/<id>/sae/<milestone>/<site>.<layer>/: sparsify's own files (cfg.json,
    sae.safetensors; `SparseCoder.load_from_disk` reads them) and labkit.json (the SAE's config,
    the checkpoint's SHA-256, the training text's digest, the measures)."""
    from labkit.run.layout import SAES

    if milestone.run_dir is None:
        raise ValueError(f"{milestone.path} is not inside a run directory: SAEs are kept beside "
                         "a run's milestones (give --run)")  # fmt: skip
    return milestone.run_dir / SAES / milestone.name / f"{site}.{layer}"


def sae_measure(
    at: LoadedMilestone,
    site: str,
    layer: int,
    cfg: Any,
    train_docs: int = 1000,
    label_data: dict[str, Any] | None = None,
    save: bool = True,
    seed_baseline: bool = True,
) -> dict[str, Any]:
    """Train an SAE on `site` at `layer` (sparsify; `labkit.analysis.sae.SAEConfig` `cfg`) from
    the activations of the first `train_docs` training documents, then on the held-out text
    `at.text`: reconstruction (MSE, explained variance, L0, dead and dense shares), the CE loss
    recovered when it is spliced in (bootstrap over documents) and, with `label_data`, the share
    of its features aligned with a ground-truth label. With `seed_baseline`, a second SAE (the
    next seed, same activations) is matched to it: how far two SAEs of one milestone agree
    (`seed_matched_cosine`, `seed_new_features`), the floor for reading drift between
    milestones. Saved beside the milestone (`sae_dir`; the second seed's in its
    `second_seed/`)."""
    from labkit.analysis.activations import hook_name
    from labkit.analysis.sae import (
        LabelSet,
        ce_loss_recovered,
        encode_dense,
        label_alignment,
        match_features,
        reconstruction,
        train_sae,
    )
    from labkit.data.build import load_data_tokenizer
    from labkit.run.cache import digest

    model, m = at.model, at.milestone
    bos, max_len = model.cfg.bos_token_id, m.context
    train_text = train_sequences(m.data_path, train_docs, max_len, bos)
    acts = at.activations(train_text, [site], [layer])[site, layer]
    sae, log = train_sae(acts, cfg)
    held_out = at.activations(at.text, [site], [layer])[site, layer]
    rec = reconstruction(sae, held_out)
    contexts = feature_contexts(sae, held_out, at.text, load_data_tokenizer(m.data_path))
    ce = ce_loss_recovered(model, at.text, sae, hook_name(site, layer))
    row: dict[str, Any] = {
        "site": site, "layer": layer, "width": sae.num_latents, "k": sae.cfg.k,
        "activation": sae.cfg.activation, "train_tokens": int(len(acts)),
        "eval_tokens": int(len(held_out)), "final_train_fvu": log[-1]["fvu"],
        "mse": rec.mse, "explained_variance": rec.explained_variance, "l0": rec.l0,
        "dead_fraction": rec.dead_fraction, "dense_fraction": rec.dense_fraction,
        "loss_clean": ce.clean, "loss_zero_ablated": ce.zero_ablated, "loss_spliced": ce.spliced,
        "ce_loss_recovered": ce.fraction, "ce_loss_recovered_ci": list(ce.ci),
    }  # fmt: skip
    if seed_baseline:
        other, _ = train_sae(acts, dataclasses.replace(cfg, seed=cfg.seed + 1))
        _, cos = match_features(sae, other)
        row.update(seed_matched_cosine=float(np.median(cos)),
                   seed_new_features=float((cos < NEW_FEATURE_COSINE).mean()))  # fmt: skip
    if label_data:
        sets = []
        for name, data in label_data.items():
            x = at.activations(data.sequences, [site], [layer])[site, layer]
            starts = np.concatenate([[0], np.cumsum([len(s) for s in data.sequences])])
            rows = np.concatenate([starts[i] + np.asarray(p, dtype=np.int64)
                                   for i, p in enumerate(data.positions)])  # fmt: skip
            fires = (encode_dense(sae, torch.as_tensor(x[rows])) > 0).numpy()
            positions = np.concatenate([np.asarray(p) for p in data.positions])
            buckets = np.searchsorted(POSITION_BUCKETS, positions, side="right")
            labels = {name: _label_values(np.asarray(data.labels)), "position": buckets}
            sets.append(LabelSet(fires, labels, np.asarray(data.groups)))
        al = label_alignment(sets)
        row.update(label_aligned_fraction=al.aligned_fraction, label_aligned_ci=list(al.ci),
                   label_aligned_raw=al.raw_aligned_fraction,
                   label_null_f1=al.null_threshold,
                   top_features=_top_aligned(al, 10, contexts))  # fmt: skip
    if save:
        out = sae_dir(m, site, layer)
        out.mkdir(parents=True, exist_ok=True)
        sae.save_to_disk(out)
        if seed_baseline:
            other.save_to_disk(out / SECOND_SEED)
        meta = {"config": cfg.to_dict(), "checkpoint_sha256": m.model_sha256,
                "milestone": m.name, "train_text_digest": digest(train_text),
                "eval_text_digest": digest(at.text), "log": log, "measures": row,
                "feature_contexts": contexts}  # fmt: skip
        (out / "labkit.json").write_text(json.dumps(meta, indent=2) + "\n")
    return row


def _top_aligned(al: Any, n: int, contexts: list[list[dict]]) -> list[dict[str, Any]]:
    order = np.argsort(-al.best_f1)[:n]
    return [{"feature": int(i), "label": al.best_label[i], "f1": float(al.best_f1[i]),
             "precision": float(al.precision[i]), "recall": float(al.recall[i]),
             "top": contexts[i][:3]}
            for i in order if al.best_label[i]]  # fmt: skip


def feature_contexts(
    sae: Any, acts: np.ndarray, sequences: Sequence[Sequence[int]], tokenizer: Any,
    n: int = 5, before: int = 8,
) -> list[list[dict[str, Any]]]:  # fmt: skip
    """Each feature's `n` top activating tokens on `sequences` (whose activations, concatenated,
    are `acts`), strongest first, each with the `before` tokens that precede it in its document:
    {"activation", "token", "context", "document", "position"}; only where the feature fires."""
    from labkit.analysis.sae import top_activations

    rows, values = top_activations(sae, acts, n)
    lengths = [len(s) for s in sequences]
    starts = np.cumsum([0, *lengths])
    document = np.repeat(np.arange(len(sequences)), lengths)
    out = []
    for feature_rows, feature_values in zip(rows, values, strict=True):
        items = []
        for row, value in zip(feature_rows, feature_values, strict=True):
            if value <= 0:
                break
            d = int(document[row])
            p, seq = int(row - starts[d]), sequences[d]
            items.append({"activation": float(value), "document": d, "position": p,
                          "token": tokenizer.decode([seq[p]], skip_special_tokens=False),
                          "context": tokenizer.decode(list(seq[max(0, p - before):p]),
                                                      skip_special_tokens=False)})  # fmt: skip
        out.append(items)
    return out


def sae_over_milestones(
    milestones: Sequence[Milestone],
    site: str,
    layer: int,
    cfg: Any = None,
    documents: int = 64,
    train_docs: int = 1000,
    labels: bool = True,
    progress: bool = False,
    seed_baseline: bool = True,
) -> dict[str, Any]:
    """`sae_measure` at every milestone (held-out: the first `documents` of the general split;
    every text cut to the context the run trained on, `Milestone.trained_context`), and each
    SAE's features matched to the previous milestone's (decoder cosine, Hungarian):
    `matched_cosine` (median), `new_features` (share whose pair's cosine is below 0.7); each
    milestone's `seed_matched_cosine` is the same measure between two seeds of one milestone.
    With `seed_baseline`, the previous milestone's SAE is matched to this one's second seed, so
    that neither comparison pairs two SAEs that started from the same initialisation."""
    from labkit.analysis.activations import check_site_layers
    from labkit.analysis.sae import SAEConfig, match_features

    cfg = cfg or SAEConfig()
    cfg.check()
    first = milestones[0]
    check_site_layers(first.model_config, site, [layer])
    for m in milestones:  # where each SAE will be saved, before any is trained
        sae_dir(Milestone.read(m), site, layer)
    mcfg = first.model_config
    # every text cut to the context the run trained on: later positions the model never saw
    context = first.context
    label_data = sae_label_data(first.data_path, context, mcfg.bos_token_id) if labels else None
    measure = functools.partial(sae_measure, site=site, layer=layer, cfg=cfg,
                                train_docs=train_docs, label_data=label_data,
                                seed_baseline=seed_baseline)  # fmt: skip
    rows = over_milestones(milestones, measure, HeldOut("general", documents, context),
                           progress and f"sae {site}.{layer}")  # fmt: skip
    from labkit.analysis.sae import load_sae

    previous = None
    for m, row in zip(milestones, rows, strict=True):
        where = sae_dir(Milestone.read(m), site, layer)
        sae = load_sae(where)
        # matched against this milestone's second seed: SAEs of one seed share their
        # initialisation, which makes consecutive milestones look more alike than they are
        current = load_sae(where / SECOND_SEED) if seed_baseline else sae
        if previous is not None:
            _, cos = match_features(previous, current)
            row["matched_cosine"] = float(np.median(cos))
            row["new_features"] = float((cos < NEW_FEATURE_COSINE).mean())
        previous = sae
    return {"site": site, "layer": layer, "config": cfg.to_dict(), "milestones": rows}


__all__ = [
    "HeldOut",
    "LoadedMilestone",
    "Measure",
    "NEW_FEATURE_COSINE",
    "POSITION_BUCKETS",
    "SAE_LABEL_TARGETS",
    "SECOND_SEED",
    "activations_measure",
    "attention_on_repeat",
    "cka_to_final",
    "compare_runs",
    "eval_sequences",
    "feature_contexts",
    "icl_measure",
    "icl_over_milestones",
    "induction_measure",
    "induction_mechanism_at",
    "induction_over_milestones",
    "induction_summary",
    "kv_patching",
    "latent_measure",
    "latent_over_milestones",
    "layer_activations",
    "logit_lens_measure",
    "logit_lens_over_milestones",
    "over_milestones",
    "probe_against_baselines",
    "probe_features_measure",
    "probe_layers_over_milestones",
    "probe_measure",
    "probe_over_milestones",
    "sae_dir",
    "sae_label_data",
    "sae_measure",
    "sae_over_milestones",
    "seed_layer_identification",
    "token_documents",
    "train_sequences",
]
