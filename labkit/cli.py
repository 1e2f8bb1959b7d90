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
