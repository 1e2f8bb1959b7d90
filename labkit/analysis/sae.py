"""Sparse autoencoders on one activation site, trained with EleutherAI's sparsify (its TopK and
GroupMax sparse coders, its loss, optimizer and save format) on activations labkit collects, and
read against what the corpus knows about every token.

    sae, log = train_sae(acts, SAEConfig(width_multiple=8, k=8))   # acts [n, d] float32
    rec = reconstruction(sae, held_out)        # MSE, explained variance, L0, dead/dense shares
    ce = ce_loss_recovered(model, sequences, sae, "kv_latent", layer)  # clean/zero/spliced loss
    al = label_alignment([LabelSet(fires, labels, documents)])  # best label vs a shift null
    pairs = match_features(sae_then, sae_now)        # decoder-cosine matching across milestones

Pure functions: tensors and arrays in, results out; `labkit.study` runs them over milestones
and `labkit sae` from the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Sites an SAE reads: the MLA latent, the residual stream, and GQA's keys and values (flattened
# over heads) for comparison.
SAE_SITES = ("kv_latent", "resid_post", "k", "v")
ACTIVATIONS = ("topk", "groupmax")  # sparsify's two sparse coders
DENSE_FIRING_RATE = 0.1  # a feature firing on more than 10 % of tokens is dense


@dataclass
class SAEConfig:
    """What one SAE is: its architecture (sparsify's `activation`), width as a multiple of the
    site's width, and active features per token; how it trains: passes over the activations,
    batch (tokens), sparsify's SignSGD + schedule-free learning rate (None: sparsify's rule,
    5e-3 / sqrt(width / 2^14)), the AuxK weight for dead features and after how many tokens
    without firing a feature counts as dead."""

    activation: str = "topk"
    width_multiple: int = 8
    k: int = 8
    epochs: int = 8
    batch_size: int = 1024
    lr: float | None = None
    auxk_alpha: float = 1 / 32
    dead_after_tokens: int = 50_000
    seed: int = 0

    def check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"sae activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        for name in ("width_multiple", "k", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"sae {name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sparsify_module():
    """sparsify, its sparse decoder set to the plain PyTorch one where there is no GPU (sparsify
    picks its Triton kernel whenever Triton imports, which fails on a CPU, or crawls through
    Triton's interpreter under TRITON_INTERPRET=1)."""
    import sparsify
    import sparsify.sparse_coder
    from sparsify.utils import eager_decode

    if not torch.cuda.is_available():
        sparsify.sparse_coder.decoder_impl = eager_decode
    return sparsify


def load_sae(path):
    """An SAE saved by `SparseCoder.save_to_disk` (labkit's `sae_dir`), on the CPU."""
    return sparsify_module().SparseCoder.load_from_disk(path)


def new_sae(d_in: int, cfg: SAEConfig):
    """An untrained sparsify SparseCoder for inputs of width `d_in`."""
    sparsify = sparsify_module()
    SparseCoder, SparseCoderConfig = sparsify.SparseCoder, sparsify.SparseCoderConfig

    cfg.check()
    width = cfg.width_multiple * d_in
    if cfg.activation == "groupmax" and width % cfg.k:
        raise ValueError(f"groupmax needs k ({cfg.k}) to divide the width ({width})")
    torch.manual_seed(cfg.seed)
    coder = SparseCoderConfig(activation=cfg.activation, num_latents=width, k=min(cfg.k, width))
    return SparseCoder(d_in, coder, device="cpu", dtype=torch.float32)


def train_sae(acts: np.ndarray | torch.Tensor, cfg: SAEConfig, progress: bool = False):
    """Train a sparsify SAE on activations [n, d] the way sparsify's own trainer does: decoder
    bias at the mean, unit-norm decoder rows with the gradient parallel to them removed, FVU
    loss plus AuxK on dead features, SignSGD under a schedule-free wrapper. Returns the SAE (its
    weights the schedule-free evaluation point) and one log row per pass."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify.sign_sgd import SignSGD
    from tqdm.auto import tqdm

    x = torch.as_tensor(np.asarray(acts), dtype=torch.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"activations must be [tokens >= 2, width], got {tuple(x.shape)}")
    sae = new_sae(x.shape[1], cfg)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.set_decoder_norm_to_unit_norm()
    lr = cfg.lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed)
    log = []
    bar = tqdm(total=cfg.epochs, desc="sae", disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        fvu_sum, batches = 0.0, 0
        for start in range(0, len(x), cfg.batch_size):
            batch = x[order[start : start + cfg.batch_size]]
            if len(batch) < 2:
                continue
            dead = since_fired > cfg.dead_after_tokens if cfg.auxk_alpha > 0 else None
            out = sae(batch, dead_mask=dead)
            (out.fvu + cfg.auxk_alpha * out.auxk_loss).backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                sae.set_decoder_norm_to_unit_norm()
                since_fired += len(batch)
                since_fired[out.latent_indices.flatten().unique()] = 0
            fvu_sum, batches = fvu_sum + float(out.fvu.detach()), batches + 1
        log.append({"epoch": epoch + 1, "fvu": fvu_sum / max(batches, 1),
                    "dead": int((since_fired > cfg.dead_after_tokens).sum())})  # fmt: skip
        bar.update(1)
    bar.close()
    opt.eval()  # the schedule-free average is the model to evaluate and save
    with torch.no_grad():
        sae.set_decoder_norm_to_unit_norm()
    return sae, log


@torch.no_grad()
def encode_dense(sae, x: torch.Tensor) -> torch.Tensor:
    """The SAE's feature activations [n, width] (zeros off the active set)."""
    out = sae.encode(x.to(sae.dtype))
    codes = torch.zeros(len(x), sae.num_latents, dtype=sae.dtype)
    return codes.scatter_(1, out.top_indices, out.top_acts)


@torch.no_grad()
def top_activations(sae, acts: np.ndarray | torch.Tensor, n: int = 8):
    """Each feature's `n` strongest activations on `acts` [tokens, d]: (row indices [width, n],
    values [width, n], strongest first); a feature that fires on fewer rows ends in zeros."""
    z = encode_dense(sae, torch.as_tensor(np.asarray(acts), dtype=torch.float32)).float()
    values, rows = z.topk(min(n, len(z)), dim=0)
    return rows.T.numpy(), values.T.numpy()


@torch.no_grad()
def reconstruct(sae, x: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction of activations [..., d] (any leading shape); a per-head hook's
    [..., heads, d_head] is read flattened over its heads, as `collect` gives it."""
    flat = x.reshape(-1, sae.d_in).to(sae.dtype)
    out = sae.encode(flat)
    return sae.decode(out.top_acts, out.top_indices).reshape(x.shape).to(x.dtype)


@dataclass
class Reconstruction:
    mse: float
    explained_variance: float  # 1 - FVU over these activations
    l0: float  # features active per token
    dead_fraction: float  # features that never fire on these activations
    dense_fraction: float  # features firing on more than DENSE_FIRING_RATE of tokens
    firing_rate: np.ndarray = field(repr=False)  # [width]


@torch.no_grad()
def reconstruction(sae, acts: np.ndarray | torch.Tensor, batch: int = 4096) -> Reconstruction:
    """How well an SAE reconstructs activations [n, d] it did not train on, and how sparse."""
    x = torch.as_tensor(np.asarray(acts), dtype=torch.float32)
    err = total = 0.0
    active = 0
    fired = torch.zeros(sae.num_latents)
    mean = x.mean(0)
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        codes = encode_dense(sae, xb)
        out = sae.decode(*sae.encode(xb)[:2])
        err += float((xb - out).pow(2).sum())
        total += float((xb - mean).pow(2).sum())
        nz = codes > 0
        active += int(nz.sum())
        fired += nz.sum(0).float()
    rate = (fired / len(x)).numpy()
    return Reconstruction(
        mse=err / x.numel(),
        explained_variance=1 - err / max(total, 1e-30),
        l0=active / len(x),
        dead_fraction=float((rate == 0).mean()),
        dense_fraction=float((rate > DENSE_FIRING_RATE).mean()),
        firing_rate=rate,
    )


def _document_losses(model, sequences: list[list[int]], hooks: list, batch: int = 16) -> np.ndarray:
    """Mean next-token loss of each sequence under `hooks` (right-padded batches)."""
    out = np.empty(len(sequences))
    for start in range(0, len(sequences), batch):
        seqs = sequences[start : start + batch]
        width = max(len(s) for s in seqs)
        tokens = torch.zeros(len(seqs), width, dtype=torch.long)
        targets = torch.full((len(seqs), width - 1), -100, dtype=torch.long)
        for r, s in enumerate(seqs):
            tokens[r, : len(s)] = torch.tensor(s)
            targets[r, : len(s) - 1] = torch.tensor(s[1:])
        with torch.inference_mode():
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[:, :-1].float()
        loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        for r, s in enumerate(seqs):
            out[start + r] = float(loss[r, : len(s) - 1].mean())
    return out


@dataclass
class CELossRecovered:
    clean: float
    zero_ablated: float
    spliced: float
    fraction: float  # (zero - spliced) / (zero - clean): 1 = the SAE loses nothing
    ci: tuple[float, float]  # bootstrap over documents, 95 %


def ce_loss_recovered(
    model, sequences: list[list[int]], sae, hook: str, n_boot: int = 1000, seed: int = 0
) -> CELossRecovered:
    """The model's loss on `sequences` clean, with `hook`'s activation zeroed, and with it
    replaced by the SAE's reconstruction (spliced in through `run_with_hooks`); the share of the
    zero-ablation loss the SAE recovers, with a bootstrap interval over documents."""

    def spliced(act, hook=None):
        return reconstruct(sae, act.float()).to(act.dtype)

    def zeroed(act, hook=None):
        return torch.zeros_like(act)

    clean = _document_losses(model, sequences, [])
    zero = _document_losses(model, sequences, [(hook, zeroed)])
    sae_loss = _document_losses(model, sequences, [(hook, spliced)])

    def fraction(idx: np.ndarray) -> float:
        gap = zero[idx].mean() - clean[idx].mean()
        return float((zero[idx].mean() - sae_loss[idx].mean()) / gap) if gap > 0 else float("nan")

    rng = np.random.default_rng(seed)
    boots = [fraction(rng.integers(0, len(clean), len(clean))) for _ in range(n_boot)]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return CELossRecovered(float(clean.mean()), float(zero.mean()), float(sae_loss.mean()),
                           fraction(np.arange(len(clean))), (float(lo), float(hi)))  # fmt: skip


@dataclass
class LabelAlignment:
    best_label: list[str]  # per feature: "label=value" with the highest F1 ("" if it never fires)
    best_f1: np.ndarray  # [width]
    precision: np.ndarray  # [width], of the best label
    recall: np.ndarray  # [width]
    null_threshold: float  # the 95th percentile of best F1 under the shift null
    aligned_fraction: float  # share of firing features whose best F1 beats it, bias-corrected
    ci: tuple[float, float]  # basic bootstrap interval over documents
    raw_aligned_fraction: float  # the share counted on all documents, before the correction


def _label_columns(labels: dict[str, np.ndarray], max_values: int) -> tuple[np.ndarray, list[str]]:
    """One-vs-rest indicator columns [n, C] of categorical labels (the `max_values` most common
    values of each), named "label=value"."""
    cols, names = [], []
    for name, values in labels.items():
        vals, counts = np.unique(values, return_counts=True)
        for v in vals[np.argsort(-counts)][:max_values]:
            cols.append(values == v)
            names.append(f"{name}={v}")
    return np.stack(cols, axis=1).astype(np.float32), names


def _best_f1(tp: np.ndarray, fires: np.ndarray, positives: np.ndarray):
    """F1, precision, recall [F, C] from true positives [F, C], firing counts [F], positives [C]."""
    precision = tp / np.maximum(fires[:, None], 1)
    recall = tp / np.maximum(positives[None, :], 1)
    f1 = 2 * tp / np.maximum(fires[:, None] + positives[None, :], 1)
    return f1, precision, recall


@dataclass
class LabelSet:
    """Tokens that carry ground-truth labels: whether each feature fires there [n, F], the
    labels {name: [n] categorical} and each token's document [n]. Sets come from different
    texts (each probe target reads its own documents); a label is only compared with the
    features on its own set's tokens."""

    fires: np.ndarray
    labels: dict[str, np.ndarray]
    documents: np.ndarray


@dataclass
class _SetCounts:
    """One label set's counts per document: true positives [D, F, C], firings [D, F] and
    positives [D, C]; summing them with document weights gives any bootstrap resample's."""

    tp: np.ndarray
    fires: np.ndarray
    positives: np.ndarray
    names: list[str]

    @classmethod
    def of(cls, s: LabelSet, y: np.ndarray, names: list[str]) -> _SetCounts:
        f = np.asarray(s.fires, dtype=np.float32)
        docs = np.unique(s.documents)
        rows = [np.flatnonzero(s.documents == d) for d in docs]
        return cls(np.stack([f[r].T @ y[r] for r in rows]), np.stack([f[r].sum(0) for r in rows]),
                   np.stack([y[r].sum(0) for r in rows]), names)  # fmt: skip

    def summed(self, weights: np.ndarray | None = None):
        if weights is None:
            return self.tp.sum(0), self.fires.sum(0), self.positives.sum(0)
        return (np.tensordot(weights, self.tp, 1), weights @ self.fires,
                weights @ self.positives)  # fmt: skip


def _best_over_sets(
    counts, best: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Best F1 per feature over every set's label columns, from (tp, fires, positives, names)
    per set: (f1, precision, recall, the best column's name, whether the feature fires, the
    best column's index). With `best`, each feature's F1 at that column instead of its best."""
    f1s, precs, recs, names = [], [], [], []
    fired = 0
    for tp, fires, positives, cols in counts:
        f1, precision, recall = _best_f1(tp, fires, positives)
        f1s.append(f1), precs.append(precision), recs.append(recall)
        names += cols
        fired = fired + fires
    f1, precision, recall = (np.concatenate(a, axis=1) for a in (f1s, precs, recs))
    best = f1.argmax(1) if best is None else best
    rows = np.arange(len(best))
    return f1[rows, best], precision[rows, best], recall[rows, best], [names[b] for b in best], \
        np.asarray(fired) > 0, best  # fmt: skip


def label_alignment(
    sets: list[LabelSet], shifts: int = 20, n_boot: int = 200, max_values: int = 8, seed: int = 0
) -> LabelAlignment:
    """Each feature's best-matching ground-truth label over every label set (one-vs-rest per
    value, the `max_values` most common values of each label), by F1 of "feature fires" against
    "label holds". The null shifts each set's label rows circularly by a random offset (at
    least its longest document), which keeps each label's runs and frequency but breaks its link
    to the tokens; a feature is aligned when its best F1 beats the null's 95th percentile. The
    share of aligned features (among those that fire) is bootstrapped over documents, each
    feature kept at the label it matched best on all documents (re-choosing the best of many
    labels in every resample would bias the resampled shares upward). A share of features above
    a threshold is biased by sampling noise: when more features sit just below the threshold
    than just above, noise lifts more of them over it than it drops. The resamples measure that
    bias (their mean minus the full-data share), so `aligned_fraction` is the bias-corrected
    share and `ci` the basic bootstrap interval around it; `raw_aligned_fraction` is the
    full-data count."""
    rng = np.random.default_rng(seed)
    columns = [_label_columns(s.labels, max_values) for s in sets]
    counts = [_SetCounts.of(s, y, names) for s, (y, names) in zip(sets, columns, strict=True)]
    f1, precision, recall, names, alive, best = _best_over_sets(
        [(*c.summed(), c.names) for c in counts]
    )
    null = []
    for _ in range(shifts):
        shifted = []
        for s, (y, cols) in zip(sets, columns, strict=True):
            n = len(s.documents)
            longest = int(np.unique(s.documents, return_counts=True)[1].max())
            shift = int(rng.integers(min(longest, n - 1), max(n - longest, longest + 1)))
            y_null = np.roll(y, shift, axis=0)
            f = np.asarray(s.fires, dtype=np.float32)
            shifted.append((f.T @ y_null, f.sum(0), y_null.sum(0), cols))
        null.append(_best_over_sets(shifted)[0])
    threshold = float(np.percentile(np.concatenate(null), 95))

    def share(f1_: np.ndarray) -> float:  # of the features that fire on all documents
        return float((f1_[alive] > threshold).mean()) if alive.any() else 0.0

    boots = []
    for _ in range(n_boot):
        resampled = []
        for c in counts:
            weights = np.bincount(rng.integers(0, len(c.tp), len(c.tp)), minlength=len(c.tp))
            resampled.append((*c.summed(weights.astype(np.float32)), c.names))
        boots.append(share(_best_over_sets(resampled, best)[0]))
    raw = share(f1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    bias = float(np.mean(boots)) - raw
    return LabelAlignment(
        best_label=[name if a else "" for name, a in zip(names, alive, strict=True)],
        best_f1=f1,
        precision=precision,
        recall=recall,
        null_threshold=threshold,
        aligned_fraction=min(max(raw - bias, 0.0), 1.0),
        ci=(max(2 * raw - float(hi), 0.0), min(2 * raw - float(lo), 1.0)),
        raw_aligned_fraction=raw,
    )


def match_features(sae_a, sae_b) -> tuple[np.ndarray, np.ndarray]:
    """Features of two SAEs of one site (consecutive milestones) paired one to one by the
    cosine of their decoder directions (Hungarian assignment): (index in b of each feature of
    a, the pair's cosine). A feature of b whose pair's cosine is low is new; one of a, gone."""
    from scipy.optimize import linear_sum_assignment

    a = F.normalize(sae_a.W_dec.detach().float(), dim=1)
    b = F.normalize(sae_b.W_dec.detach().float(), dim=1)
    cos = (a @ b.T).numpy()
    rows, cols = linear_sum_assignment(-cos)
    match = np.full(len(a), -1)
    match[rows] = cols
    return match, cos[rows, cols]


__all__ = [
    "ACTIVATIONS",
    "SAE_SITES",
    "CELossRecovered",
    "LabelAlignment",
    "LabelSet",
    "Reconstruction",
    "SAEConfig",
    "ce_loss_recovered",
    "encode_dense",
    "label_alignment",
    "load_sae",
    "match_features",
    "new_sae",
    "reconstruct",
    "reconstruction",
    "sparsify_module",
    "top_activations",
    "train_sae",
]
