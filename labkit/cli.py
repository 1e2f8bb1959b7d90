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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"labkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
