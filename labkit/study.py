"""Runs and their milestones, and the analyses of `labkit.analysis` applied across them.

This is the layer the `labkit` commands and the notebooks share: it opens run directories, picks
milestones, loads each checkpoint once and returns plain rows (dicts of floats and lists) that a
table or a plot can use directly. The analyses themselves stay pure functions in `labkit.analysis`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from labkit.analysis.probe_tasks import ProbeSpec
from labkit.checkpoint import list_milestones, load
from labkit.config import ModelConfig
from labkit.resources import probes_dir
from labkit.runs import CHECKPOINTS, CONFIG, FINAL, METRICS, Milestone

PROBES_DIR = probes_dir()


# ----------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """A training run directory: its config, its milestones and its logged metrics."""

    path: Path
    model: ModelConfig
    train: dict[str, Any]
    milestones: list[Path] = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def attention(self) -> str:
        return self.model.attention

    @property
    def mix(self) -> str:
        return self.train["data"]["mix"]

    @property
    def label(self) -> str:
        return f"{self.attention.upper()} / {self.mix}"

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", 0))

    @property
    def variant(self) -> dict[str, Any]:
        """Architecture fields set on top of the preset (e.g. {"kv_lora_rank": 8}): {} for the
        preset itself. Settings that do not change the architecture (init_std) are not one."""
        return {k: v for k, v in sorted(self.train.get("model", {}).items())
                if k not in ("preset", "init_std", "attn_impl", "name")}  # fmt: skip

    @property
    def cell(self) -> tuple:
        """Runs of one cell differ only in their seed: attention, corpus and model variant."""
        return (self.attention, self.mix, tuple(self.variant.items()))

    @property
    def init(self) -> Path | None:
        """The step-0 milestone (`checkpoint.save_init`), if the run has one."""
        first = self.milestones[0]
        return first if _tokens(first) == 0 else None

    @property
    def trained(self) -> list[Path]:
        """The milestones after at least one optimizer step."""
        return [m for m in self.milestones if _tokens(m) > 0]

    def trained_splits(self) -> list[str]:
        """The held-out splits whose source this run trained on (a dense run never saw the
        control corpus): the in-distribution splits its losses are reported on."""
        from labkit.data.build import trained_splits

        manifest = json.loads((run_data_dir(self.milestones[-1]) / "manifest.json").read_text())
        return trained_splits(manifest, self.mix, _tokens(self.milestones[-1]))

    @property
    def finished(self) -> bool:
        return (self.path / FINAL).exists()

    def metrics(self) -> tuple[list[dict], list[dict]]:
        """(training rows, evaluation rows) of metrics.jsonl; eval rows carry `val/<split>`."""
        rows = [json.loads(line) for line in (self.path / METRICS).read_text().splitlines()]
        evals = [r for r in rows if any(k.startswith("val/") for k in r)]
        return [r for r in rows if "loss" in r], evals


def open_run(path: str | Path) -> Run:
    """A run directory written by pretrain/run.py (config.json and checkpoints/)."""
    path = Path(path)
    config = path / CONFIG
    if not config.exists():
        raise FileNotFoundError(f"{path} is not a labkit run (no config.json); train one with "
                                "`python pretrain/run.py` or `make paper`")  # fmt: skip
    saved = json.loads(config.read_text())
    milestones = list_milestones(path)
    if not milestones:
        raise FileNotFoundError(f"{path} has no milestones in {path / CHECKPOINTS}")
    return Run(path, ModelConfig.from_dict(saved["model"]), saved["train"], milestones)


def is_run(path: Path) -> bool:
    return (path / CONFIG).exists() and (path / CHECKPOINTS).is_dir()


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Runs named directly, or every run one level inside a directory (e.g. runs/paper-mini)."""
    runs = []
    for p in map(Path, paths):
        if is_run(p):
            runs.append(open_run(p))
            continue
        inside = sorted(d for d in p.glob("*") if is_run(d))
        if not inside:
            raise FileNotFoundError(
                f"no runs in {p}: give run directories or a directory of runs (`make paper` "
                "writes runs/paper-mini)"
            )
        runs.extend(open_run(d) for d in inside)
    return runs


def pick_run(runs: Sequence[Run], attention: str, mix: str | None = None) -> Run | None:
    """The main run with this attention kind (and mix, when given): the preset itself (no model
    variant) and, among seeds, the first run in name order; else any matching run."""
    matching = [r for r in runs if r.attention == attention and (mix is None or r.mix == mix)]
    if not matching:
        return None
    return min(matching, key=lambda r: (bool(r.variant), r.name))


def main_runs(runs: Sequence[Run]) -> list[Run]:
    """One run per (attention, corpus): `pick_run`'s choice, in the order given."""
    chosen = {id(pick_run(runs, r.attention, r.mix)) for r in runs}
    return [r for r in runs if id(r) in chosen]


def seed_groups(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    """Cells (`Run.cell`) trained with two or more seeds, each with its runs in name order."""
    cells: dict[tuple, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.name):
        cells.setdefault(r.cell, []).append(r)
    return {c: rs for c, rs in cells.items() if len({r.seed for r in rs}) >= 2}


def pick_milestones(milestones: Sequence[Path], n: int | None) -> list[Path]:
    """At most `n` milestones spread evenly in log(tokens), always with the first and the last."""
    milestones = list(milestones)
    if n is None or len(milestones) <= n:
        return milestones
    if n < 2:
        return milestones[-1:]
    tokens = np.log([max(1, _tokens(m)) for m in milestones])
    targets = np.linspace(tokens[0], tokens[-1], n)
    chosen = sorted({int(np.argmin(np.abs(tokens - t))) for t in targets})
    return [milestones[i] for i in chosen]


def select_milestones(
    run_dir: str | Path, milestones: str | Sequence[str] | None = "all"
) -> list[Path]:
    """A run's milestones: all, or those named (directory names, token counts, `first`, `last`,
    `best` = lowest mean validation loss) in a comma list or sequence."""
    found = list_milestones(run_dir)
    if not found:
        raise FileNotFoundError(f"no milestones in {run_dir}/checkpoints: is it a labkit run?")
    if milestones in (None, "all"):
        return found
    wanted = [
        m.strip() for m in (milestones.split(",") if isinstance(milestones, str) else milestones)
    ]
    aliases = {"first": found[0].name, "last": found[-1].name}
    if "best" in wanted:
        aliases["best"] = best_milestone(found).name
    wanted = list(dict.fromkeys(aliases.get(m, m) for m in wanted))
    by_name = {p.name: p for p in found} | {p.name.split("_")[-1].lstrip("0"): p for p in found}
    missing = [m for m in wanted if m not in by_name and m.lstrip("0") not in by_name]
    if missing:
        raise ValueError(f"unknown milestones {missing}; available: {[p.name for p in found]}")
    return [by_name.get(m) or by_name[m.lstrip("0")] for m in wanted]


def best_milestone(milestones: Sequence[Path]) -> Path:
    """The milestone with the lowest mean validation loss over its eval splits (meta.json)."""
    scored = []
    for path in milestones:
        m = Milestone.read(path)
        if m.val:
            scored.append((m.val_mean, path))
    if not scored:
        raise ValueError("no milestone records validation losses: 'best' needs eval splits")
    return min(scored, key=lambda x: x[0])[1]


def shared_milestones(a: Run, b: Run) -> list[tuple[Path, Path]]:
    """Milestones the two runs both have (same token count), in order."""
    other = {p.name: p for p in b.milestones}
    return [(p, other[p.name]) for p in a.milestones if p.name in other]


# ----------------------------------------------------------------------------------- text inputs
def eval_sequences(data_dir: str | Path, split: str, n_docs: int, max_len: int) -> list[list[int]]:
    """Token sequences of the first documents of a held-out split of a built data set."""
    from labkit.data.tokenizer import load_tokenizer

    path = Path(data_dir) / "text" / f"eval_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a built data set?")
    tok = load_tokenizer(Path(data_dir) / "tokenizer.json")
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()[:n_docs]]
    return [ids[:max_len] for ids in (e.ids for e in tok.encode_batch(docs)) if len(ids) >= 4]


def run_data_dir(milestone: Path) -> Path:
    """The data set a milestone was trained on (the trainer records it as an absolute path)."""
    return Milestone.read(milestone).data_path


def _progress(items: Sequence, desc: str, progress: bool) -> Iterable:
    return tqdm(items, desc=desc, disable=not progress, leave=False)


# ------------------------------------------------------------------------------------- induction
def induction_over_milestones(
    milestones: Sequence[Path],
    seq_len: int = 32,
    batch: int = 8,
    threshold: float = 0.3,
    progress: bool = False,
) -> dict[str, Any]:
    """Per milestone: induction scores on repeated random tokens, loss on both copies,
    previous/duplicate-token scores on held-out text, copying scores; and the phase change."""
    from labkit.analysis.induction import (
        copying_scores,
        head_scores,
        phase_change,
        repeated_random_tokens,
        repeated_tokens_test,
        uniform_induction_score,
    )

    rows = []
    for path in _progress(milestones, "induction", progress):
        model, meta = load(path)
        n = min(seq_len, (model.cfg.max_seq_len - 1) // 2)
        tokens = repeated_random_tokens(model.cfg.vocab_size, n, batch=batch, seed=0)
        rep = repeated_tokens_test(model, tokens, n)
        text = eval_sequences(run_data_dir(path), "general", 1, model.cfg.max_seq_len)[0]
        text = torch.tensor(text)
        rows.append({
            "milestone": path.name, "tokens": meta["tokens"], "seq_len": n,
            "induction": rep.induction_score.tolist(),
            "loss_first_copy": rep.loss_first, "loss_second_copy": rep.loss_second,
            "max_induction": float(rep.induction_score.max()),
            "previous_token": head_scores(model, text, "previous_token").tolist(),
            "duplicate_token": head_scores(model, text, "duplicate_token").tolist(),
            "copying": copying_scores(model).tolist(),
        })  # fmt: skip
    result: dict[str, Any] = {"milestones": rows}
    if rows:
        result["uniform_score"] = uniform_induction_score(rows[0]["seq_len"])
    if len(rows) >= 2:
        result["phase_change"] = phase_change(
            [r["tokens"] for r in rows], [r["max_induction"] for r in rows], threshold
        )
    return result


def induction_summary(induction: dict[str, Any], icl: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The numbers a study reports per run from `induction_over_milestones` and
    `icl_over_milestones` over the same milestones: the best head's score, when it crossed the
    threshold (None if never), the copy-loss drop at the last milestone, and the in-context-
    learning score just before and at the crossing, beside its steepest improvement."""
    rows = induction["milestones"]
    change = induction.get("phase_change") or {}
    best = max(rows, key=lambda r: r["max_induction"])
    layer, head = np.unravel_index(int(np.argmax(best["induction"])), np.shape(best["induction"]))
    out: dict[str, Any] = {
        "max_score": best["max_induction"],
        "max_head": [int(layer), int(head)],
        "max_at_tokens": best["tokens"],
        "final_score": rows[-1]["max_induction"],
        "threshold": change.get("threshold"),
        "uniform_score": induction.get("uniform_score"),
        "crossing_tokens": change.get("first_above_threshold"),
        "crossed_in": change.get("crossed_in"),
        "crossed_inside_training": bool(change.get("crossed_inside")),
        "milestone_tokens": [r["tokens"] for r in rows],
        "copy_loss_drop": rows[-1]["loss_first_copy"] - rows[-1]["loss_second_copy"],
    }
    by_tokens = {x["tokens"]: x["icl_score"] for x in icl}
    scores = [by_tokens.get(r["tokens"]) for r in rows]
    if None not in scores and len(scores) >= 2:
        steps = np.diff(scores)
        k = int(np.argmin(steps))  # ICL scores fall (more negative) as in-context learning grows
        out["icl_steepest_improvement"] = [rows[k]["tokens"], rows[k + 1]["tokens"]]
        out["icl_first"], out["icl_final"] = scores[0], scores[-1]
        if out["crossed_in"]:
            before, at = out["crossed_in"]
            out["icl_before_crossing"], out["icl_at_crossing"] = by_tokens[before], by_tokens[at]
    return out


def icl_over_milestones(
    milestones: Sequence[Path],
    split: str = "general",
    documents: int = 32,
    early: int = 16,
    late: int = 200,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Olsson et al.'s in-context-learning score (loss at token `late` minus at `early`) on
    held-out documents at least `late + 1` tokens long."""
    from labkit.analysis.induction import in_context_learning_score

    rows = []
    for path in _progress(milestones, "in-context learning", progress):
        model, meta = load(path)
        late_ = min(late, model.cfg.max_seq_len - 1)
        seqs = eval_sequences(run_data_dir(path), split, 4 * documents, late_ + 1)
        long = [s for s in seqs if len(s) > late_][:documents]
        if not long:
            raise ValueError(f"no {split} document has more than {late_} tokens")
        score = in_context_learning_score(model, torch.tensor(long), early, late_)
        rows.append({"milestone": path.name, "tokens": meta["tokens"], "icl_score": score,
                     "documents": len(long), "early": early, "late": late_})  # fmt: skip
    return rows


def attention_on_repeat(milestone: Path, seq_len: int = 16, seed: int = 0) -> dict[str, Any]:
    """Attention patterns [layers, heads, q, k] of one repeated random sequence, with the
    induction scores that rank the heads."""
    from labkit.analysis.induction import (
        attention_patterns,
        repeated_random_tokens,
        repeated_tokens_test,
    )

    model, meta = load(milestone)
    tokens = repeated_random_tokens(model.cfg.vocab_size, seq_len, batch=1, seed=seed)
    with torch.no_grad():
        patterns = attention_patterns(model, tokens)[0].float()
    scores = repeated_tokens_test(model, tokens, seq_len).induction_score
    return {"tokens": meta["tokens"], "patterns": patterns.numpy(), "induction": scores.numpy()}


# ------------------------------------------------------------------------------------ similarity
def layer_activations(
    milestone: Path, sequences: Sequence[Sequence[int]], site: str = "resid_post"
) -> list[np.ndarray]:
    """One [tokens, width] array per layer at `site`."""
    from labkit.analysis.activations import collect

    model, _ = load(milestone)
    layers = list(range(model.cfg.n_layers))
    acts = collect(model, sequences, [site], layers, progress=False)
    return [np.asarray(acts[site, i]) for i in layers]


def cka_to_final(
    milestones: Sequence[Path],
    sequences: Sequence[Sequence[int]],
    site: str = "resid_post",
    progress: bool = False,
) -> dict[str, Any]:
    """CKA of each layer at each milestone to the same layer at the last milestone, and the
    last milestone's layer x layer CKA."""
    from labkit.analysis.similarity import cka, cka_matrix

    final = layer_activations(milestones[-1], sequences, site)
    rows = []
    for path in _progress(milestones, "CKA to final", progress):
        acts = final if path == milestones[-1] else layer_activations(path, sequences, site)
        rows.append({"milestone": path.name, "tokens": _tokens(path),
                     "cka": [cka(a, b) for a, b in zip(acts, final, strict=True)]})  # fmt: skip
    return {"rows": rows, "within_final": cka_matrix(final).tolist()}


def compare_runs(
    pairs: Sequence[tuple[Path, Path]],
    sequences: Sequence[Sequence[int]],
    site: str = "resid_post",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """For matched milestones of two runs: layer x layer CKA (rows: first run) and RSA per layer
    (correlation RDMs over a subsample of tokens)."""
    from labkit.analysis.similarity import cka_matrix, rsa

    rows = []
    for a, b in _progress(pairs, "compare runs", progress):
        acts_a = layer_activations(a, sequences, site)
        acts_b = layer_activations(b, sequences, site)
        keep = np.random.default_rng(0).permutation(len(acts_a[0]))[:500]
        rows.append({
            "milestone": a.name, "tokens": _tokens(a),
            "cka": cka_matrix(acts_a, acts_b).tolist(),
            "rsa": [rsa(x[keep], y[keep]) for x, y in zip(acts_a, acts_b, strict=True)],
        })  # fmt: skip
    return rows


def _tokens(milestone: Path) -> int:
    return Milestone.read(milestone).tokens


# ---------------------------------------------------------------------------------------- latent
def latent_over_milestones(
    milestones: Sequence[Path],
    split: str = "general",
    documents: int = 32,
    max_len: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per MLA milestone and layer: the c_kv spectrum, k/v variance carried by the top latent
    directions, the loss when c_kv is truncated to rank k, and single-direction ablations."""
    from labkit.analysis.activations import collect
    from labkit.analysis.latent import (
        direction_ablation_loss,
        kv_variance_explained,
        spectrum,
        truncated_all_layers_loss,
        truncated_latent_loss,
    )

    rows = []
    for path in _progress(milestones, "c_kv latent", progress):
        model, meta = load(path)
        if model.cfg.attention != "mla":
            raise ValueError(f"{path} is a {model.cfg.attention.upper()} model: c_kv needs MLA")
        seqs = eval_sequences(run_data_dir(path), split, documents, max_len)
        layers = list(range(model.cfg.n_layers))
        acts = collect(model, seqs, ["kv_latent"], layers, progress=False)
        width = min(len(s) for s in seqs)
        tokens = torch.tensor([s[:width] for s in seqs])
        r = model.cfg.kv_lora_rank
        ranks = sorted({k for k in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k < r} | {r})
        specs = [spectrum(np.asarray(acts["kv_latent", layer])) for layer in layers]
        all_layers = truncated_all_layers_loss(model, tokens, specs, ranks)
        for layer in layers:
            c_kv = acts["kv_latent", layer]
            spec = specs[layer]
            rows.append({
                "milestone": path.name, "tokens": meta["tokens"], "layer": layer,
                "participation_ratio": spec.participation_ratio,
                "entropy_rank": spec.entropy_rank,
                "singular_values": spec.singular_values.tolist(),
                "ranks": ranks,
                "kv_variance_explained": kv_variance_explained(model, layer, c_kv, ranks),
                "truncated_loss": truncated_latent_loss(model, tokens, layer, spec, ranks),
                "truncated_all_layers_loss": all_layers,
                "direction_ablation_loss": direction_ablation_loss(
                    model, tokens, layer, spec, list(range(min(3, r)))
                ),
            })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------- probes
def logit_lens_over_milestones(
    milestones: Sequence[Path],
    split: str = "general",
    documents: int = 16,
    max_len: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per milestone: the logit lens's next-token loss at every residual stream on held-out
    documents (TransformerLens's accumulated_resid through ln_final and W_U)."""
    from labkit.analysis.lens import logit_lens_loss

    rows = []
    for path in _progress(milestones, "logit lens", progress):
        model, meta = load(path)
        seqs = eval_sequences(run_data_dir(path), split, documents, max_len)
        width = min(len(s) for s in seqs)
        losses, labels = logit_lens_loss(model, torch.tensor([s[:width] for s in seqs]))
        rows.append(
            {"milestone": path.name, "tokens": meta["tokens"], "labels": labels, "loss": losses}
        )
    return rows


def kv_patching(
    milestone: Path, split: str = "general", documents: int = 8, length: int = 24, last: int = 4
) -> dict[str, Any]:
    """Which layer's c_kv, at which position, carries the context an MLA model uses. Clean:
    held-out windows of `length` tokens; corrupted: the same windows with their first half taken
    from other documents. Metric: the mean log-probability of the clean window's last `last`
    tokens. Every (layer, position) of c_kv is patched from clean into corrupted with
    TransformerLens's patching; `recovery` = (patched - corrupted) / (clean - corrupted)."""
    from labkit.analysis.latent import kv_latent_patching

    model, meta = load(milestone)
    if model.cfg.attention != "mla":
        raise ValueError(f"{milestone} is a {model.cfg.attention.upper()} model: c_kv needs MLA")
    seqs = eval_sequences(run_data_dir(milestone), split, 2 * documents, length)
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
        "tokens": meta["tokens"],
        "clean": clean_value,
        "corrupted": corrupted_value,
        "patched": patched.tolist(),
        "recovery": ((patched - corrupted_value) / (clean_value - corrupted_value)).tolist(),
        "corrupted_positions": length // 2,
        "documents": len(clean),
    }


def probe_targets(probes_dir: str | Path = PROBES_DIR) -> list[str]:
    return sorted(p.stem for p in Path(probes_dir).glob("*.yaml"))


def load_probe_spec(
    target: str, probes_dir: str | Path = PROBES_DIR, max_documents: int | None = None
) -> ProbeSpec:
    """The probe spec `target` of `probes_dir` (default: the shipped probes/), parsed once."""
    import yaml

    path = Path(probes_dir) / f"{target}.yaml"
    if not path.exists():
        raise ValueError(f"unknown target {target!r}; targets in {probes_dir}: "
                         f"{probe_targets(probes_dir)}")  # fmt: skip
    return ProbeSpec.parse(yaml.safe_load(path.read_text()), max_documents)


def probe_over_milestones(
    milestones: Sequence[Path],
    spec: ProbeSpec | dict[str, Any],
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
    kind: str = "linear",
    data_dir: str | Path | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Probe rows (accuracy or R^2, control accuracy, selectivity) for every layer x milestone.
    The probe data are built once, from the data set of the first milestone unless given."""
    from labkit.analysis.activations import check_site_layers
    from labkit.analysis.probe_tasks import build_probe_data, unseen_text_warning
    from labkit.analysis.probing import probe_model
    from labkit.data.build import load_manifest
    from labkit.data.tokenizer import load_tokenizer

    rows, data = [], None
    for path in _progress(milestones, f"probe {spec.get('name', '')}".strip(), progress):
        model, meta = load(path)
        if data is None:
            root = Path(data_dir) if data_dir else run_data_dir(path)
            tok = load_tokenizer(root / "tokenizer.json")
            manifest = load_manifest(root)
            warning = unseen_text_warning(spec, manifest)
            if warning:
                print(warning, file=sys.stderr)
            data = build_probe_data(spec, tok, manifest, root, model.cfg.max_seq_len)
        chosen = check_site_layers(model.cfg, site, layers)
        for layer, r in probe_model(model, data, site, chosen, kind).items():
            rows.append({"target": spec.get("name"), "site": site, "probe": kind, "layer": layer,
                         "milestone": path.name, "tokens": meta["tokens"], "task": data.task,
                         "examples": data.n_examples, **r.to_dict()})  # fmt: skip
    return rows


# -------------------------------------------------------------------- probes against baselines
INIT_MISSING = ("the run has no step-0 milestone (train with `--set checkpoint.save_init=true`): "
                "no init baseline")  # fmt: skip


def init_milestone(milestones: Sequence[Path]) -> Path | None:
    """The step-0 milestone (meta "init": true, written with `checkpoint.save_init = true`), or
    None when the run has none."""
    for path in milestones:
        meta = path / "meta.json"
        if meta.exists() and json.loads(meta.read_text()).get("init"):
            return path
    return None


def trained_milestones(milestones: Sequence[Path]) -> list[Path]:
    """The milestones after step 0 (the init milestone is a baseline, not a point of training)."""
    init = init_milestone(milestones)
    return [m for m in milestones if m != init]


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
    data_dir: Path,
    max_len: int,
    positions_per_document: int = 4,
    seed: int = 0,
) -> ProbeSet:
    """Build a target's probe data, split and baseline features from a data set."""
    from labkit.analysis.probe_tasks import build_probe_data, unseen_text_warning
    from labkit.analysis.probing import bag_of_tokens, split_by_document
    from labkit.data.build import load_manifest
    from labkit.data.tokenizer import load_tokenizer

    tok = load_tokenizer(data_dir / "tokenizer.json")
    manifest = load_manifest(data_dir)
    warning = unseen_text_warning(spec, manifest)
    if warning:
        print(warning, file=sys.stderr)
    data = build_probe_data(spec, tok, manifest, data_dir, max_len)
    data = _cap_positions(data, positions_per_document, seed)
    token_level = spec["positions"]["kind"] == "span" or spec["label"]["kind"] == "token_is_digit"
    groups = np.unique(data.groups) if data.document_mean else data.groups
    vocab = tok.get_vocab_size()
    return ProbeSet(
        data=data,
        level="token" if token_level else "document",
        split=split_by_document(groups, seed=seed),
        bow=bag_of_tokens(data.sequences, data.positions, vocab, data.document_mean),
        digit_counts=_digit_counts(data, tok) if spec["label"]["kind"] == "number_value" else None,
        vocab_size=vocab,
    )


def _features(path: Path, probe_sets: dict[str, ProbeSet], site: str, autocast=torch.bfloat16):
    """Each target's probe features at one milestone, with one forward pass per distinct set of
    documents (targets of one `stream` share it). bf16 autocast, as the models were trained."""
    from labkit.analysis.probing import all_token_activations, probe_features

    model, meta = load(path)
    layers = list(range(model.cfg.n_layers))
    keys = {name: hash(tuple(map(tuple, p.data.sequences))) for name, p in probe_sets.items()}
    out, cache = {}, {}
    # targets grouped by their documents: each stream's forward pass once, one in memory at a time
    for name in sorted(probe_sets, key=lambda n: (keys[n], n)):
        probes = probe_sets[name]
        if keys[name] not in cache:
            cache.clear()
            cache[keys[name]] = all_token_activations(
                model, probes.data.sequences, site, layers, autocast=autocast
            )
        out[name] = probe_features(model, probes.data, site, layers, acts=cache[keys[name]])
    return {name: out[name] for name in probe_sets}, meta


def probe_against_baselines(
    final: Path,
    init: Path | None,
    probe_sets: dict[str, ProbeSet],
    site: str = "resid_post",
    n_null: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Every target of `probe_sets` (from `probe_set`, shared between runs trained on the same
    data set) probed at milestone `final` against its baselines (see
    `labkit.analysis.probing.probe_with_baselines`). `init` is the run's step-0 milestone: its
    probe is the init baseline; None when the run has none (then `init_baseline` is None and
    `init_missing` says why -- never invented)."""
    from labkit.analysis.probing import probe_with_baselines

    features, meta = _features(final, probe_sets, site)
    init_features = _features(init, probe_sets, site)[0] if init is not None else {}
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
            init_features=init_features[name][0] if init is not None else None,
            bow=probes.bow,
            digit_counts=probes.digit_counts,
            split=probes.split,
            n_null=n_null,
            seed=seed,
        )
        out.update(target=name, milestone=final.name, tokens=meta["tokens"], site=site,
                   init_milestone=init.name if init is not None else None)  # fmt: skip
        if init is None:
            out["init_missing"] = INIT_MISSING
        results[name] = out
    return results


def probe_layers_over_milestones(
    milestones: Sequence[Path],
    probe_sets: dict[str, ProbeSet],
    site: str = "resid_post",
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Per target, the test score of every layer at every milestone (strength chosen on
    validation per layer): the descriptive layer x milestone profile, plus the layer that
    validation picks (the one a reported number would use)."""
    from labkit.analysis.probing import fit_and_test, layer_scores

    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in probe_sets}
    for path in milestones:
        features, meta = _features(path, probe_sets, site)
        for name, probes in probe_sets.items():
            (X, keep), data = features[name], probes.data
            y = data.labels[keep]
            chosen = fit_and_test(X, y, probes.split, data.task, seed)[0]
            scores = layer_scores(X, y, probes.split, data.task, seed)
            rows[name].append({"milestone": path.name, "tokens": meta["tokens"],
                               "chosen_layer": chosen.layer, "scores": scores})  # fmt: skip
    return rows
