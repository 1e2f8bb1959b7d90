"""`labkit` command line. Each subcommand is a thin shell over library functions."""

from __future__ import annotations

import argparse
import json
import sys

from labkit.config import PRESETS, ModelConfig, human, params_gap


def models_table(names: list[str] | None = None) -> str:
    """The preset table: shape, parameters, non-embedding parameters, KV-cache bytes per token."""
    names = names or list(PRESETS)
    header = (
        f"{'preset':<12}{'attn':<5}{'d_model':>8}{'layers':>7}{'heads':>6}{'kv':>4}{'d_ff':>6}"
        f"{'vocab':>7}{'params':>10}{'non-emb':>10}{'KV B/tok':>10}{'twin gap':>9}"
    )
    rows = [header, "-" * len(header)]
    for name in names:
        c = ModelConfig.preset(name)
        kv = c.n_kv_heads if c.attention == "gqa" else "-"
        twin = _twin_name(name)
        gap = f"{100 * params_gap(c, ModelConfig.preset(twin)):.2f}%" if twin else ""
        rows.append(
            f"{name:<12}{c.attention:<5}{c.d_model:>8}{c.n_layers:>7}{c.n_heads:>6}{kv:>4}"
            f"{c.d_ff:>6}{c.vocab_size:>7}{human(c.num_params()):>10}"
            f"{human(c.num_params(non_embedding=True)):>10}"
            f"{c.kv_cache_bytes_per_token():>10,}{gap:>9}"
        )
    rows.append(
        "KV B/tok: KV-cache bytes per token over all layers in bf16 (MLA caches c_kv + RoPE key). "
        "twin gap: parameter difference to the other attention kind of the same size."
    )
    return "\n".join(rows)


def _twin_name(name: str) -> str | None:
    swapped = name.replace("mla", "\0").replace("gqa", "mla").replace("\0", "gqa")
    return swapped if swapped in PRESETS and swapped != name else None


def cmd_models(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({n: ModelConfig.preset(n).to_dict() for n in PRESETS}, indent=2))
    else:
        print(models_table())
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from labkit.config import DataConfig
    from labkit.data.build import build, dataset_card

    cfg = DataConfig.load(args.config)
    manifest = build(cfg, args.out, quiet=args.quiet)
    print(dataset_card(args.out))
    total = sum(s["tokens"] for s in manifest["sources"].values())
    print(
        f"\nwrote {args.out}: {total:,} train tokens; `labkit data card {args.out}` shows the card"
    )
    return 0


def cmd_data_card(args: argparse.Namespace) -> int:
    from labkit.data.build import dataset_card

    print(dataset_card(args.dir))
    return 0


PROBE_SITES = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "kv_latent",
    "q_latent",
)


def _milestones(args: argparse.Namespace) -> list:
    """The milestone directories named by --checkpoint, or by --run and --milestones."""
    from pathlib import Path

    from labkit.checkpoint import list_milestones

    if args.checkpoint:
        return [Path(args.checkpoint)]
    found = list_milestones(args.run)
    if not found:
        raise FileNotFoundError(f"no milestones in {args.run}/checkpoints: is it a labkit run?")
    if args.milestones in (None, "all"):
        return found
    wanted = [m.strip() for m in args.milestones.split(",")]
    by_name = {p.name: p for p in found} | {p.name.split("_")[-1].lstrip("0"): p for p in found}
    missing = [m for m in wanted if m not in by_name and m.lstrip("0") not in by_name]
    if missing:
        raise ValueError(f"unknown milestones {missing}; available: {[p.name for p in found]}")
    return [by_name.get(m) or by_name[m.lstrip("0")] for m in wanted]


def cmd_probe(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import yaml

    from labkit.analysis.probe_tasks import build_probe_data
    from labkit.analysis.probing import probe_model
    from labkit.checkpoint import load
    from labkit.data.build import load_manifest
    from labkit.data.tokenizer import load_tokenizer

    probes_dir = Path(args.probes_dir)
    spec_path = probes_dir / f"{args.target}.yaml"
    if not spec_path.exists():
        names = sorted(p.stem for p in probes_dir.glob("*.yaml"))
        raise ValueError(f"unknown target {args.target!r}; targets in {probes_dir}: {names}")
    if args.site not in PROBE_SITES:
        raise ValueError(f"unknown site {args.site!r}; sites: {list(PROBE_SITES)}")
    spec = yaml.safe_load(spec_path.read_text())
    if args.max_documents:
        spec["source"]["documents"] = min(spec["source"].get("documents", 300), args.max_documents)
    milestones = _milestones(args)
    rows, data, layers = [], None, None
    for path in milestones:
        model, meta = load(path)
        if data is None:
            data_dir = Path(args.data or meta["data_dir"])
            manifest = load_manifest(data_dir)
            data = build_probe_data(
                spec,
                load_tokenizer(data_dir / "tokenizer.json"),
                manifest,
                data_dir,
                model.cfg.max_seq_len,
            )
            n = model.cfg.n_layers
            layers = (
                list(range(n)) if args.layer == "all" else [int(x) for x in args.layer.split(",")]
            )
            if any(not 0 <= layer < n for layer in layers):
                raise ValueError(
                    f"--layer {args.layer}: the model has layers 0..{n - 1} (or 'all')"
                )
        if args.site in ("kv_latent", "q_latent") and model.cfg.attention != "mla":
            raise ValueError(
                f"site {args.site!r} exists only in MLA models; sites: {list(PROBE_SITES)}"
            )
        for layer, r in probe_model(model, data, args.site, layers, args.probe).items():
            where = {"layer": layer, "milestone": path.name, "tokens": meta["tokens"]}
            rows.append({"target": args.target, "site": args.site, "probe": args.probe, **where})
            rows[-1].update(r.to_dict())
    metric = "R^2" if data.task == "regression" else "accuracy"
    print(
        f"{args.target} ({data.task}, {data.n_examples} examples) at {args.site}: "
        f"{metric} / control / selectivity"
    )
    names = [p.name for p in milestones]
    print(f"{'layer':<7}" + "".join(f"{n[-14:]:>26}" for n in names))
    for layer in layers:
        cells = []
        for name in names:
            r = next(x for x in rows if x["layer"] == layer and x["milestone"] == name)
            ctl = "-" if r["control_accuracy"] is None else f"{r['control_accuracy']:.2f}"
            sel = "-" if r["selectivity"] is None else f"{r['selectivity']:+.2f}"
            cells.append(f"{r['accuracy']:.3f} / {ctl} / {sel}")
        print(f"{layer:<7}" + "".join(f"{c:>26}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


def _eval_sequences(data_dir, split: str, n_docs: int, max_len: int) -> list[list[int]]:
    """Token sequences of the first documents of a held-out split of the run's data set."""
    import json
    from pathlib import Path

    from labkit.data.tokenizer import load_tokenizer

    path = Path(data_dir) / "text" / f"eval_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a built data set?")
    tok = load_tokenizer(Path(data_dir) / "tokenizer.json")
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()[:n_docs]]
    return [ids[:max_len] for ids in (e.ids for e in tok.encode_batch(docs)) if len(ids) >= 4]


def _write_json(path: str | None, payload) -> None:
    import json
    from pathlib import Path

    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def cmd_induction(args: argparse.Namespace) -> int:
    import torch

    from labkit.analysis.induction import (
        copying_scores,
        head_scores,
        phase_change,
        repeated_random_tokens,
        repeated_tokens_test,
    )
    from labkit.checkpoint import load

    rows = []
    for path in _milestones(args):
        model, meta = load(path)
        seq_len = min(args.seq_len, (model.cfg.max_seq_len - 1) // 2)
        tokens = repeated_random_tokens(model.cfg.vocab_size, seq_len, batch=args.batch, seed=0)
        rep = repeated_tokens_test(model, tokens, seq_len)
        text = torch.tensor(
            _eval_sequences(meta["data_dir"], "general", 1, model.cfg.max_seq_len)[0]
        )
        row = {"milestone": path.name, "tokens": meta["tokens"], "seq_len": seq_len,
               "induction": rep.induction_score.tolist(), "loss_first_copy": rep.loss_first,
               "loss_second_copy": rep.loss_second,
               "max_induction": float(rep.induction_score.max()),
               "previous_token": head_scores(model, text, "previous_token").tolist(),
               "duplicate_token": head_scores(model, text, "duplicate_token").tolist(),
               "copying": copying_scores(model).tolist()}  # fmt: skip
        rows.append(row)
        print(f"{path.name}: max induction {row['max_induction']:.3f}, loss on the copies "
              f"{rep.loss_first:.2f} -> {rep.loss_second:.2f}")  # fmt: skip
    result = {"milestones": rows}
    if len(rows) >= 2:
        result["phase_change"] = phase_change(
            [r["tokens"] for r in rows], [r["max_induction"] for r in rows], args.threshold
        )
        print(f"phase change: {result['phase_change']}")
    _write_json(args.json, result)
    return 0


def cmd_cka(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from labkit.analysis.activations import collect
    from labkit.analysis.similarity import cka, cka_matrix
    from labkit.checkpoint import list_milestones, load

    def layer_acts(path, seqs):
        model, meta = load(path)
        acts = collect(model, seqs, [args.site], list(range(model.cfg.n_layers)), progress=False)
        return [np.asarray(acts[args.site, i]) for i in range(model.cfg.n_layers)], meta

    runs = [Path(r) for r in args.runs]
    first = list_milestones(runs[0])
    if not first:
        raise FileNotFoundError(f"no milestones in {runs[0]}")
    _, meta0 = load(first[-1])
    seqs = _eval_sequences(meta0["data_dir"], args.split, args.documents, args.max_len)
    result: dict = {"site": args.site, "split": args.split, "documents": len(seqs)}
    final, _ = layer_acts(first[-1], seqs)
    result["within"] = {first[-1].name: cka_matrix(final).tolist()}

    def acts_of(path):  # one milestone in memory at a time; the final one is reused
        return final if path == first[-1] else layer_acts(path, seqs)[0]

    to_final = {p.name: [cka(a, b) for a, b in zip(acts_of(p), final, strict=True)] for p in first}
    result["to_final"] = to_final
    print(f"{runs[0].name}: CKA of each layer to its final state")
    for name, vals in to_final.items():
        print(f"  {name}: " + " ".join(f"{v:.2f}" for v in vals))
    if len(runs) == 2:
        other = {p.name: p for p in list_milestones(runs[1])}
        between = {}
        for path in first:
            if path.name in other:
                b, _ = layer_acts(other[path.name], seqs)
                between[path.name] = cka_matrix(acts_of(path), b).tolist()
        if not between:
            raise ValueError(f"{runs[0].name} and {runs[1].name} share no milestone names")
        result["between"] = between
        last = list(between)[-1]
        diagonal = " ".join(f"{between[last][i][i]:.2f}" for i in range(len(between[last])))
        print(f"{runs[0].name} vs {runs[1].name} at {last}: diagonal {diagonal}")
    _write_json(args.json, result)
    return 0


def cmd_latent(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from labkit.analysis.activations import collect
    from labkit.analysis.latent import (
        direction_ablation_loss,
        kv_variance_explained,
        spectrum,
        truncated_latent_loss,
    )
    from labkit.checkpoint import load

    rows = []
    for path in _milestones(args):
        model, meta = load(path)
        if model.cfg.attention != "mla":
            raise ValueError(
                f"{path} is a {model.cfg.attention.upper()} model: `labkit latent` needs MLA"
            )
        seqs = _eval_sequences(meta["data_dir"], args.split, args.documents, args.max_len)
        layers = list(range(model.cfg.n_layers))
        acts = collect(model, seqs, ["kv_latent"], layers, progress=False)
        width = min(len(s) for s in seqs)
        tokens = torch.tensor([s[:width] for s in seqs])
        r = model.cfg.kv_lora_rank
        ranks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k < r} | {r})
        for layer in layers:
            spec = spectrum(np.asarray(acts["kv_latent", layer]))
            c_kv = acts["kv_latent", layer]
            row = {
                "milestone": path.name,
                "tokens": meta["tokens"],
                "layer": layer,
                "participation_ratio": spec.participation_ratio,
                "entropy_rank": spec.entropy_rank,
                "singular_values": spec.singular_values.tolist(),
                "ranks": ranks,
                "kv_variance_explained": kv_variance_explained(model, layer, c_kv, ranks),
                "truncated_loss": truncated_latent_loss(model, tokens, layer, spec, ranks),
                "direction_ablation_loss": direction_ablation_loss(
                    model, tokens, layer, spec, list(range(min(3, r)))
                ),
            }
            rows.append(row)
            print(f"{path.name} layer {layer}: participation ratio {spec.participation_ratio:.1f}, "
                  f"entropy rank {spec.entropy_rank:.1f} of {r}")  # fmt: skip
    _write_json(args.json, {"rows": rows})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labkit", description="Pre-train small MLA/GQA models and look inside them."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    models = sub.add_parser("models", help="table of model presets (parameters, KV-cache bytes)")
    models.add_argument("--json", action="store_true", help="print every preset's full config")
    models.set_defaults(func=cmd_models)

    data = sub.add_parser("data", help="build and describe data sets")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_sub.required = True
    b = data_sub.add_parser("build", help="generate, curate, tokenize, shard and mix")
    b.add_argument(
        "--config", required=True, help="a TOML file, e.g. pretrain/configs/data/ci.toml"
    )
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_data_build)
    c = data_sub.add_parser("card", help="print the dataset card of a built data set")
    c.add_argument("dir")
    c.set_defaults(func=cmd_data_card)

    from pathlib import Path

    probe = sub.add_parser("probe", help="train probes at layers x milestones of a run")
    probe.add_argument("--layer", required=True, help="a layer, a comma list, or 'all'")
    probe.add_argument("--target", required=True, help="a probe spec name in probes/")
    where = probe.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="a run directory (runs/<id>)")
    where.add_argument("--checkpoint", help="one milestone directory")
    probe.add_argument("--site", default="resid_post", help=f"one of {', '.join(PROBE_SITES)}")
    probe.add_argument("--probe", default="linear", choices=["linear", "mlp"])
    probe.add_argument(
        "--milestones", default="all", help="'all' or a comma list of names/token counts"
    )
    probe.add_argument("--json", help="write the result rows here")
    probe.add_argument("--data", help="the data set (default: the one the run trained on)")
    probe.add_argument("--max-documents", type=int, help="cap the spec's number of documents")
    probe.add_argument("--probes-dir", default=str(Path(__file__).resolve().parents[1] / "probes"))
    probe.set_defaults(func=cmd_probe)

    def run_args(p, multi: bool = False) -> None:
        if not multi:
            where = p.add_mutually_exclusive_group(required=True)
            where.add_argument("--run", help="a run directory")
            where.add_argument("--checkpoint", help="one milestone directory")
            p.add_argument("--milestones", default="all", help="'all' or a comma list")
        p.add_argument("--json", help="write the results here")

    ind = sub.add_parser(
        "induction", help="induction, previous/duplicate-token and copying scores over milestones"
    )
    run_args(ind)
    ind.add_argument(
        "--seq-len", type=int, default=32, help="length of the repeated random sequence"
    )
    ind.add_argument("--batch", type=int, default=8)
    ind.add_argument(
        "--threshold", type=float, default=0.3, help="induction score that counts as formed"
    )
    ind.set_defaults(func=cmd_induction)

    ck = sub.add_parser(
        "cka", help="CKA layer x layer within a run, to the final state, and between two runs"
    )
    ck.add_argument("--runs", nargs="+", required=True, help="one run, or two (e.g. MLA and GQA)")
    ck.add_argument("--site", default="resid_post", choices=list(PROBE_SITES))
    ck.add_argument("--split", default="general", help="held-out split whose text is used")
    ck.add_argument("--documents", type=int, default=64)
    ck.add_argument("--max-len", type=int, default=128)
    run_args(ck, multi=True)
    ck.set_defaults(func=cmd_cka)

    la = sub.add_parser(
        "latent", help="the MLA latent c_kv over milestones: spectrum, k/v variance, truncation"
    )
    run_args(la)
    la.add_argument("--split", default="general")
    la.add_argument("--documents", type=int, default=32)
    la.add_argument("--max-len", type=int, default=64)
    la.set_defaults(func=cmd_latent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"labkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
