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


def add_models(sub) -> None:
    """`labkit models`."""
    models = sub.add_parser("models", help="table of model presets (parameters, KV-cache bytes)")
    models.add_argument("--json", action="store_true", help="print every preset's full config")
    models.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({n: ModelConfig.preset(n).to_dict() for n in PRESETS}, indent=2))
    else:
        print(models_table())
    return 0


def add_data(sub) -> None:
    """`labkit data build|card`."""
    data = sub.add_parser("data", help="build and describe data sets")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_sub.required = True
    b = data_sub.add_parser(
        "build", help="generate, curate, tokenize, shard and mix", formatter_class=DefaultsHelp
    )
    b.add_argument(
        "--config", required=True, help="a TOML file, e.g. pretrain/configs/data/ci.toml"
    )
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument(
        "--workers", type=int, help="processes generating and curating sources (default: cores)"
    )
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if it is not a labkit data set (default: refuse)",
    )
    b.set_defaults(func=cmd_data_build)
    c = data_sub.add_parser(
        "card", help="print the dataset card of a built data set", formatter_class=DefaultsHelp
    )
    c.add_argument("dir")
    c.add_argument(
        "--samples", action="store_true", help="also print one train document per text source"
    )
    c.set_defaults(func=cmd_data_card)


def cmd_data_build(args: argparse.Namespace) -> int:
    from labkit.config import DataConfig
    from labkit.data.build import build, dataset_card

    cfg = DataConfig.load(args.config)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    manifest = build(cfg, args.out, quiet=args.quiet, overwrite=args.overwrite,
                     workers=args.workers)  # fmt: skip
    print(dataset_card(args.out))
    total = sum(s["tokens"] for s in manifest["sources"].values())
    print(
        f"\nwrote {args.out}: {total:,} train tokens; `labkit data card {args.out}` shows the card"
    )
    return 0


def cmd_data_card(args: argparse.Namespace) -> int:
    from labkit.data.build import dataset_card, sample_documents

    print(dataset_card(args.dir))
    if args.samples:
        print(sample_documents(args.dir))
    return 0


def _milestones(args: argparse.Namespace) -> list:
    """The milestones named by --checkpoint, or by --run and --milestones."""
    from labkit.run import Milestone, select_milestones

    if args.checkpoint:
        return [Milestone.read(args.checkpoint)]
    return select_milestones(args.run, args.milestones)


def add_probe(sub) -> None:
    """`labkit probe`."""
    probe = sub.add_parser("probe", help="train probes at layers x milestones of a run")
    probe.add_argument("--layer", required=True, help="a layer, a comma list, or 'all'")
    from labkit.analysis.activations import SITES
    from labkit.analysis.probe_tasks import probe_targets
    from labkit.resources import probes_dir

    shipped = probe_targets(probes_dir())
    probe.add_argument(
        "--target",
        required=True,
        help=f"a probe spec name in --probes-dir; shipped: {', '.join(shipped) or 'none'}",
    )
    where = probe.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="a run directory (runs/<id>)")
    where.add_argument("--checkpoint", help="one milestone directory")
    probe.add_argument("--site", default="resid_post", help=f"one of {', '.join(SITES)}")
    probe.add_argument("--probe", default="linear", choices=["linear", "mlp"])
    probe.add_argument(
        "--milestones",
        default="all",
        help="'all', or a comma list of first, last, best, names or token counts",
    )
    probe.add_argument("--json", help="write the result rows here")
    probe.add_argument("--data", help="the data set (default: the one the run trained on)")
    probe.add_argument("--max-documents", type=int, help="cap the spec's number of documents")
    probe.add_argument("--max-len", type=int, help="tokens of each document the probe reads "
                       "(default: the context the run trained on; positions past it are ones "
                       "the model never saw)")  # fmt: skip
    probe.add_argument(
        "--probes-dir",
        default=str(probes_dir()),
        help="folder of probe specs (YAML)",
    )
    probe.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from labkit.analysis.probe_tasks import load_probe_spec
    from labkit.study import probe_over_milestones

    layers = parse_layers(args.layer)  # first: a typo costs no loading
    spec = load_probe_spec(args.target, args.probes_dir, args.max_documents)
    milestones = _milestones(args)
    rows = probe_over_milestones(
        milestones, spec, args.site, layers, args.probe, args.data, True, args.max_len
    )
    first = rows[0]
    metric = "R^2" if first["task"] == "regression" else "accuracy"
    base = "predicting the mean" if first["task"] == "regression" else "the majority class"
    print(
        f"{args.target} ({first['task']}, {first['examples']} examples) at {args.site}: "
        f"{metric} / control / selectivity, one line per milestone and layer; baseline: {base}"
    )
    for line in probe_table(rows, metric):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


def parse_layers(text: str) -> list[int] | None:
    """`--layer`: 'all' (None), a layer number or a comma list of them."""
    if text.strip() == "all":
        return None
    parts = [x.strip() for x in text.split(",")]
    bad = [x for x in parts if not x.isdigit()]
    if bad or not parts:
        raise ValueError(
            f"--layer {text!r}: expected a layer number (0, 1, ...), a comma list such as 0,2 "
            f"or 'all'; {bad[0] if bad else 'nothing'!r} is not a layer number"
        )
    return [int(x) for x in parts]


def probe_table(rows: list[dict], metric: str = "accuracy") -> list[str]:
    """The probe rows as a long table: one line per milestone and layer (a wide grid of
    milestones does not fit a terminal), with the 95 % interval and the baseline beside."""
    head = (f"{'milestone':<16}{'layer':>6}{metric:>10}{'95% CI':>15}{'baseline':>10}"
            f"{'control':>9}{'selectivity':>13}")  # fmt: skip
    lines = [head]
    for r in rows:
        ctl = "-" if r["control_accuracy"] is None else f"{r['control_accuracy']:.3f}"
        sel = "-" if r["selectivity"] is None else f"{r['selectivity']:+.3f}"
        ci = f"{r['ci_low']:.3f}-{r['ci_high']:.3f}"
        lines.append(
            f"{milestone_label(r['milestone']):<16}{r['layer']:>6}{r['accuracy']:>10.3f}"
            f"{ci:>15}{r['baseline']:>10.3f}{ctl:>9}{sel:>13}"
        )
    return lines


def milestone_label(name: str) -> str:
    """`tokens_000003010560` -> `3.01M tokens`; other names unchanged."""
    from labkit.config import human

    count = name.rsplit("_", 1)[-1]
    return f"{human(int(count))} tokens" if count.isdigit() else name


def _write_json(path: str | None, payload) -> None:
    import json
    from pathlib import Path

    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def _run_args(p: argparse.ArgumentParser, multi: bool = False) -> None:
    """--run/--checkpoint, --milestones and --json, shared by the analysis commands."""
    if not multi:
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--run", help="a run directory")
        where.add_argument("--checkpoint", help="one milestone directory")
        p.add_argument(
            "--milestones",
            default="all",
            help="'all', or a comma list of first, last, best, names",
        )
    p.add_argument("--json", help="write the results here")


def add_induction(sub) -> None:
    """`labkit induction`."""
    ind = sub.add_parser(
        "induction", help="induction, previous/duplicate-token and copying scores over milestones"
    )
    _run_args(ind)
    ind.add_argument(
        "--seq-len", type=int, default=32, help="length of the repeated random sequence"
    )
    ind.add_argument("--batch", type=int, default=8)
    ind.add_argument(
        "--threshold", type=float, default=0.3, help="induction score that counts as formed"
    )
    ind.set_defaults(func=cmd_induction)


def cmd_induction(args: argparse.Namespace) -> int:
    from labkit.study import induction_over_milestones

    result = induction_over_milestones(
        _milestones(args), args.seq_len, args.batch, args.threshold, progress=True
    )
    for row in result["milestones"]:
        print(f"{row['milestone']}: best second-copy score {row['max_second_copy']:.3f} "
              f"(detect_head {row['max_tl']:.3f}), loss on the copies "
              f"{row['loss_first_copy']:.2f} -> {row['loss_second_copy']:.2f}")  # fmt: skip
    if "uniform_score" in result:
        print(f"uniform attention scores {result['uniform_score']:.3f} "
              f"(detect_head {result['uniform_tl_score']:.3f})")  # fmt: skip
    if "phase_change" in result:
        print(phase_change_line(result["phase_change"]))
    _write_json(args.json, result)
    return 0


def phase_change_line(change: dict) -> str:
    """`labkit induction`'s verdict in words, from `labkit.analysis.induction.phase_change`."""
    from labkit.config import human

    t, (a, b) = change["threshold"], change["steepest_rise"]
    rise = f"steepest rise {change['rise']:+.3f} between {human(a)} and {human(b)} tokens"
    if change["first_above_threshold"] is None:
        return f"phase change: not reached (no milestone's best head scores >= {t}); {rise}"
    if change["crossed_in"] is None:
        return (f"phase change: already above {t} at the first milestone "
                f"({human(change['first_above_threshold'])} tokens); {rise}")  # fmt: skip
    lo, hi = change["crossed_in"]
    where = "inside training" if change["crossed_inside"] else "at the last milestone"
    return (f"phase change: the best head crossed {t} between {human(lo)} and {human(hi)} tokens "
            f"({where}); {rise}")  # fmt: skip


def add_cka(sub) -> None:
    """`labkit cka`."""
    from labkit.analysis.activations import SITES

    ck = sub.add_parser(
        "cka", help="CKA layer x layer within a run, to the final state, and between two runs"
    )
    ck.add_argument("--runs", nargs="+", required=True, help="one run, or two (e.g. MLA and GQA)")
    ck.add_argument("--site", default="resid_post", choices=list(SITES))
    ck.add_argument("--split", default="general", help="held-out split whose text is used")
    ck.add_argument("--documents", type=int, default=64)
    ck.add_argument("--max-len", type=int, default=128)
    _run_args(ck, multi=True)
    ck.set_defaults(func=cmd_cka)


def cmd_cka(args: argparse.Namespace) -> int:
    from labkit.analysis.similarity import layer_identification
    from labkit.run import open_run, shared_milestones
    from labkit.study import cka_to_final, compare_runs, eval_sequences

    runs = [open_run(r) for r in args.runs]
    first = runs[0]
    seqs = eval_sequences(first.data_path, args.split, args.documents, args.max_len)
    result: dict = {"site": args.site, "split": args.split, "documents": len(seqs)}
    to_final = cka_to_final(first.milestones, seqs, args.site, progress=True)
    result["within"] = {first.milestones[-1].name: to_final["within_final"]}
    result["to_final"] = {r["milestone"]: r["cka"] for r in to_final["rows"]}
    print(f"{first.name}: CKA of each layer to its final state")
    for name, vals in result["to_final"].items():
        print(f"  {name}: " + " ".join(f"{v:.2f}" for v in vals))
    if len(runs) == 2:
        pairs = shared_milestones(first, runs[1])
        if not pairs:
            raise ValueError(f"{first.name} and {runs[1].name} share no milestone names")
        rows = compare_runs(pairs, seqs, args.site, progress=True)
        result["between"] = {r["milestone"]: r["cka"] for r in rows}
        result["rsa"] = {r["milestone"]: r["rsa"] for r in rows}
        last = rows[-1]["cka"]
        diagonal = " ".join(f"{last[i][i]:.2f}" for i in range(min(len(last), len(last[0]))))
        line = f"{first.name} vs {runs[1].name} at {rows[-1]['milestone']}: diagonal {diagonal}"
        if len(last) == len(last[0]):
            # Kornblith et al.'s check, meaningful when the two runs are seeds of one architecture
            result["layer_identification"] = {
                r["milestone"]: layer_identification(r["cka"]) for r in rows
            }
            found = result["layer_identification"][rows[-1]["milestone"]]
            line += (f"; the most similar layer is the same layer for {found['fraction']:.0%} of "
                     f"layers (argmax {found['argmax']})")  # fmt: skip
        print(line)
    _write_json(args.json, result)
    return 0


def add_latent(sub) -> None:
    """`labkit latent`."""
    la = sub.add_parser(
        "latent", help="the MLA latent c_kv over milestones: spectrum, k/v variance, truncation"
    )
    _run_args(la)
    la.add_argument("--split", default="general")
    la.add_argument("--documents", type=int, default=32)
    la.add_argument("--max-len", type=int, default=64)
    la.set_defaults(func=cmd_latent)


def cmd_latent(args: argparse.Namespace) -> int:
    from labkit.study import latent_over_milestones

    rows = latent_over_milestones(
        _milestones(args), args.split, args.documents, args.max_len, progress=True
    )
    for row in rows:
        print(f"{row['milestone']} layer {row['layer']}: participation ratio "
              f"{row['participation_ratio']:.1f}, entropy rank {row['entropy_rank']:.1f} of "
              f"{row['ranks'][-1]}")  # fmt: skip
    _write_json(args.json, {"rows": rows})
    return 0


def add_sae(sub) -> None:
    """`labkit sae train`."""
    from labkit.analysis.sae import ACTIVATIONS, SAE_SITES, SAEConfig

    sae = sub.add_parser("sae", help="sparse autoencoders (sparsify) on a site across milestones")
    sae_sub = sae.add_subparsers(dest="sae_command", metavar="SUBCOMMAND")
    sae_sub.required = True
    tr = sae_sub.add_parser(
        "train",
        help="train an SAE per milestone at one site and layer; measure it spliced in; read its "
        "features against the corpus's labels",
    )
    _run_args(tr)
    tr.add_argument("--site", required=True, choices=SAE_SITES)
    tr.add_argument("--layer", required=True, type=int)
    d = SAEConfig()
    tr.add_argument("--activation", choices=ACTIVATIONS, default=d.activation)
    tr.add_argument("--width-multiple", type=int, default=d.width_multiple,
                    help="features per dimension of the site")  # fmt: skip
    tr.add_argument("--k", type=int, default=d.k, help="active features per token")
    tr.add_argument("--epochs", type=int, default=d.epochs)
    tr.add_argument("--documents", type=int, default=64, help="held-out documents (general)")
    tr.add_argument("--train-docs", type=int, default=1000, help="training documents read")
    tr.add_argument("--no-labels", action="store_true", help="skip the label alignment")
    tr.set_defaults(func=cmd_sae_train)


def cmd_sae_train(args: argparse.Namespace) -> int:
    from labkit.analysis.sae import SAEConfig
    from labkit.study import sae_dir, sae_over_milestones

    cfg = SAEConfig(activation=args.activation, width_multiple=args.width_multiple, k=args.k,
                    epochs=args.epochs)  # fmt: skip
    milestones = _milestones(args)
    result = sae_over_milestones(
        milestones, args.site, args.layer, cfg, args.documents, args.train_docs,
        labels=not args.no_labels, progress=True,
    )  # fmt: skip
    for m, row in zip(milestones, result["milestones"], strict=True):
        lo, hi = row["ce_loss_recovered_ci"]
        line = (f"{row['milestone']} {args.site}.{args.layer}: explained variance "
                f"{row['explained_variance']:.3f}, L0 {row['l0']:.1f}, dead "
                f"{row['dead_fraction']:.0%}, CE loss recovered {row['ce_loss_recovered']:.3f} "
                f"[{lo:.3f}, {hi:.3f}]")  # fmt: skip
        if "label_aligned_fraction" in row:
            line += f", label-aligned features {row['label_aligned_fraction']:.0%}"
        if "matched_cosine" in row:
            line += f", matched to the previous milestone at cosine {row['matched_cosine']:.2f}"
        line += f" (two seeds here: {row['seed_matched_cosine']:.2f})"
        print(f"{line}\n  saved {sae_dir(m, args.site, args.layer)}")
    _write_json(args.json, result)
    return 0


def figures_out(runs: list[str], out: str | None) -> str:
    """Where `labkit figures` writes: --out, else `labkit.figures.figures_dir_for(runs)` (the
    committed figures/ only for the committed study runs/paper-mini)."""
    from labkit.figures import figures_dir_for

    return out or str(figures_dir_for(runs))


def add_figures(sub) -> None:
    """`labkit figures`."""
    fig = sub.add_parser(
        "figures", help="execute the notebooks headless and regenerate figures/ and its manifest"
    )
    fig.add_argument(
        "--runs",
        nargs="+",
        default=["runs/paper-mini"],
        help="run directories, or a directory of runs (default: runs/paper-mini from make paper)",
    )
    fig.add_argument(
        "--out",
        help="output directory (default: figures/ for the committed study runs/paper-mini, "
        "else RUN/figures of the first --runs)",
    )
    fig.add_argument("--smoke", action="store_true", help="few milestones and documents: fast")
    fig.add_argument("--notebooks", nargs="*", help="only these (e.g. 02 03_probes)")
    fig.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    fig.add_argument("--executed", help="also save the executed notebooks (.ipynb) here")
    fig.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even if it holds files labkit figures did not make",
    )
    fig.set_defaults(func=cmd_figures)


def cmd_figures(args: argparse.Namespace) -> int:
    from labkit.figures import NotebookFailed, build

    args.out = figures_out(args.runs, args.out)

    try:
        manifest = build(
            args.runs,
            args.out,
            args.smoke,
            args.notebooks,
            args.kernel,
            args.executed,
            overwrite=args.overwrite,
        )
    except NotebookFailed as err:
        print(f"labkit figures: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(manifest['figures'])} figures and MANIFEST.json to {args.out}")
    return 0


def add_eval(sub) -> None:
    """`labkit eval`."""
    ev = sub.add_parser(
        "eval", help="evaluate milestones with lm-eval (offline labkit_suite), or build the suite"
    )
    ev.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "build-tasks", "perplexity"],
        help="run the task suite (default), build its tasks, or perplexity on one eval split",
    )
    ev.add_argument("--split", help="perplexity: the eval split (e.g. prose, or a source name)")
    ev.add_argument("--run", help="a run directory")
    ev.add_argument("--tasks", default="labkit_suite", help="comma list (default labkit_suite)")
    ev.add_argument(
        "--milestones", default="all", help="'all', or a comma list of first, last, best, names"
    )
    ev.add_argument(
        "--limit", type=int, help="examples per task (perplexity: documents) for quick looks"
    )
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--registry", help="registry file (default: index.jsonl beside the run)")
    ev.add_argument("--data", help="build-tasks: the data set (e.g. data/demo)")
    ev.add_argument("--out", help="build-tasks: output directory (default DATA/tasks)")
    ev.add_argument("--examples", type=int, default=200, help="build-tasks: examples per task")
    ev.add_argument(
        "--overwrite", action="store_true", help="build-tasks: write into a non-suite --out"
    )
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit.eval.tasks import build_tasks

    if args.action == "build-tasks":
        if not args.data:
            raise ValueError("labkit eval build-tasks needs --data DIR (a built data set)")
        out = build_tasks(args.data, args.out, args.examples, overwrite=args.overwrite)
        print(
            f"wrote the labkit_suite tasks to {out}; run them with `labkit eval --run RUN` or "
            f"`labkit lm-eval --model labkit --include_path {out} --tasks labkit_suite ...`"
        )
        return 0
    if args.action == "perplexity":
        return _eval_perplexity(args)
    from labkit.eval.runner import evaluate_run, main_metric

    if not args.run:
        raise ValueError("labkit eval needs --run DIR (or the build-tasks action)")
    tasks = [t.strip() for t in args.tasks.split(",")]
    records = evaluate_run(
        args.run, tasks, args.milestones, args.limit, args.batch_size, args.device, args.registry
    )
    names = sorted({t for r in records for t in r["scores"] if t.startswith("labkit_")})
    print(f"{'milestone':<22}" + "".join(f"{t.replace('labkit_', '')[:11]:>12}" for t in names))
    for r in records:
        cells = [r["scores"].get(t, {}).get(main_metric(t)) for t in names]
        print(
            f"{r['milestone']:<22}"
            + "".join(f"{c:>12.3f}" if c is not None else f"{'-':>12}" for c in cells)
        )
    print(
        f"results in {Path(args.run) / 'evals'} and the registry "
        f"{args.registry or Path(args.run).parent / 'index.jsonl'}"
    )
    return 0


def _eval_perplexity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit.eval.perplexity import perplexity_over_milestones, write_rows
    from labkit.run import select_milestones

    if not args.run or not args.split:
        raise ValueError("labkit eval perplexity needs --run DIR and --split NAME (an eval split)")
    rows = perplexity_over_milestones(
        select_milestones(args.run, args.milestones), args.split, args.limit, args.batch_size
    )
    print(f"perplexity on eval_{args.split} ({rows[0]['documents']} documents, "
          f"{rows[0]['tokens']:,} predicted tokens)")  # fmt: skip
    print(f"{'milestone':<22}{'loss':>10}{'perplexity':>12}")
    for r in rows:
        print(f"{r['milestone']:<22}{r['loss']:>10.4f}{r['perplexity']:>12.2f}")
    from labkit.run.layout import EVALS

    out = Path(args.run) / EVALS / f"perplexity_{args.split}.json"
    write_rows(out, rows)
    print(f"wrote {out}")
    return 0


def add_export(sub) -> None:
    """`labkit export`."""
    ex = sub.add_parser(
        "export", help="a milestone as a Hugging Face folder (weights, config, tokenizer, eos)"
    )
    ex.add_argument("--checkpoint", required=True, help="a milestone directory")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-export --out")
    ex.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit.export import to_hf
    from labkit.run import load

    model, _ = load(args.checkpoint)
    if model.tokenizer is None:
        raise ValueError(
            f"{args.checkpoint} carries no tokenizer.json and its data set's is gone: the export "
            "would not load in a pipeline"
        )
    out = to_hf(model, args.out, overwrite=args.overwrite)
    python = Path(sys.executable)  # the interpreter that has transformers: works outside the venv
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    print(
        f"exported {args.checkpoint} to {out} (weights, config, tokenizer, eos/pad ids); try:\n"
        f'  {python} -c "from transformers import pipeline; '
        f"print(pipeline('text-generation', '{out}')('The', max_new_tokens=20))\""
    )
    return 0


def add_lm_eval(sub) -> None:
    """`labkit lm-eval`: parsed by lm-eval itself (main() hands the arguments over first)."""
    sub.add_parser(
        "lm-eval",
        add_help=False,
        help="lm-eval's own command line with --model labkit registered (all lm_eval arguments)",
    )


def add_baselines(sub) -> None:
    """`labkit baselines`."""
    bl = sub.add_parser("baselines", help="random / untrained / small-trained baselines, 3 seeds")
    bl.add_argument("--preset", default="tiny-mla")
    bl.add_argument("--config", default="pretrain/configs/demo.toml", help="base trainer config")
    bl.add_argument("--seeds", default="0,1,2")
    bl.add_argument("--untrained-steps", type=int, default=100)
    bl.add_argument("--trained-steps", type=int, default=1000)
    bl.add_argument("--out", default="runs/baselines")
    bl.add_argument("--limit", type=int, help="examples per task")
    bl.add_argument("--set", action="append", help="extra trainer override (section.key=value)")
    bl.set_defaults(func=cmd_baselines)


def cmd_baselines(args: argparse.Namespace) -> int:
    from labkit.eval.baselines import establish_baselines

    record = establish_baselines(
        args.preset,
        args.config,
        [int(s) for s in args.seeds.split(",")],
        args.untrained_steps,
        args.trained_steps,
        args.out,
        args.limit,
        args.set or [],
    )
    checks = record["checks"]
    print(f"{'task':<22}{'random':>8}{'untrained':>11}{'trained':>9}")
    for t in sorted(record["random"]):
        u = record["scores"]["untrained"].get(t, [float("nan")])
        tr = record["scores"]["trained"].get(t, [float("nan")])
        print(
            f"{t:<22}{record['random'][t]:>8.3f}{sum(u) / len(u):>11.3f}{sum(tr) / len(tr):>9.3f}"
        )
    print(
        f"consistent across seeds: {checks['consistent']}; trained > untrained > random on "
        f"{100 * checks['monotonic_share']:.0f} % of tasks"
    )
    return 0


def add_report(sub) -> None:
    """`labkit report`."""
    rp = sub.add_parser("report", help="research_report.md from the experiment registry")
    rp.add_argument("--registry", nargs="+", default=["runs/index.jsonl"])
    rp.add_argument("--out", default="research_report.md")
    rp.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from labkit.eval.report import read_registry, write_report

    out = write_report(read_registry(*args.registry), args.out)
    print(f"wrote {out}")
    return 0


def add_sweep(sub) -> None:
    """`labkit sweep`."""
    sw = sub.add_parser("sweep", help="train a grid of runs (or print torchrun commands)")
    sw.add_argument("file", help="e.g. pretrain/configs/sweeps/learning-rate.toml")
    sw.add_argument("--print", action="store_true", help="print one torchrun command per run")
    sw.add_argument("--nproc", type=int, default=1)
    sw.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from labkit.sweep import run_sweep

    entries = run_sweep(args.file, args.print, args.nproc)
    if not args.print:
        print(f"{len(entries)} runs done; `labkit report` summarises them")
    return 0


def add_kernels(sub) -> None:
    """`labkit kernels report`."""
    kn = sub.add_parser("kernels", help="Triton kernels: compile-time resource checks (no GPU)")
    kn_sub = kn.add_subparsers(dest="kernels_command", metavar="KERNELS_COMMAND")
    kn_sub.required = True
    kr = kn_sub.add_parser(
        "report",
        help="compile every kernel x launch config for sm_80/86/89/90: shared memory, registers, "
        "spills against each architecture's limits",
    )
    kr.add_argument(
        "--arch",
        action="append",
        help="sm_80, sm_86, sm_89 or sm_90; repeat for several (default: all four)",
    )
    kr.add_argument("--json", help="write the rows here (a JSON list)")
    kr.add_argument(
        "--quick",
        action="store_true",
        help="bf16 at head dims 64/128/192-128/256 and one-token MLA decode (what CI runs)",
    )
    kr.add_argument("--all-rows", action="store_true", help="print every row, not the summary")
    kr.add_argument("--workers", type=int, help="parallel compiler processes (default: cores)")
    kr.add_argument(
        "--record", action="store_true", help="append the tables to benchmarks/RESULTS.md"
    )
    kr.add_argument("--quiet", action="store_true", help="no progress bar")
    kr.set_defaults(func=cmd_kernels_report)


def cmd_kernels_report(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from pathlib import Path

    import triton

    from labkit.kernels.report import ARCHS, markdown, parse_arch, run, summary, table

    archs = [parse_arch(a) for a in args.arch] if args.arch else list(ARCHS)
    rows = run(archs, quick=args.quick, workers=args.workers, progress=not args.quiet)
    print(f"Triton {triton.__version__}; {len(rows)} kernel configurations compiled")
    print(table(rows) if args.all_rows else summary(rows))
    bad = [r for r in rows if not r.fits]
    for r in bad:
        print(f"DOES NOT FIT: {r.kernel} {r.arch} {r.config}: {r.problems}")
    if args.record:
        from labkit.bench.common import record

        command = "labkit kernels report" + (" --quick" if args.quick else "")
        record("labkit kernels report (compile-time resources, no GPU)", markdown(rows, command))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
        print(f"wrote {args.json}")
    return 1 if bad else 0


class DefaultsHelp(argparse.HelpFormatter):
    """`--help` that shows each option's default (none for unset options and off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, False, argparse.SUPPRESS) or "default" in text
        if action.option_strings and not quiet:
            text += " (default: %(default)s)"
        return text


# One `add_<command>(sub)` beside each command; this is the order of `labkit --help`.
COMMANDS = (add_models, add_data, add_probe, add_induction, add_cka, add_latent, add_sae,
            add_figures, add_eval, add_export, add_lm_eval, add_baselines, add_report, add_sweep,
            add_kernels)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labkit", description="Pre-train small MLA/GQA models and look inside them."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    for choice in sub.choices.values():  # `--help` of every command shows each option's default
        choice.formatter_class = DefaultsHelp
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    from labkit.errors import one_line_errors

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:
        # lm-eval parses its own arguments; labkit registers its model and checks the task
        # directories and its own arguments first. `--debug` is labkit's (lm-eval has none).
        from labkit.eval.adapter import lm_eval_cli

        rest, debug = [a for a in argv[1:] if a != "--debug"], "--debug" in argv[1:]
        return one_line_errors("labkit lm-eval", lambda: lm_eval_cli(rest), debug)
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show tracebacks, not one line")
    parser.add_argument(
        "--trust-unverified",
        action="store_true",
        help="load checkpoints without checksums (written by older labkits)",
    )
    args = parser.parse_args(_global_flags_first(argv))
    if args.trust_unverified:
        os.environ["LABKIT_TRUST_UNVERIFIED"] = "1"
    return one_line_errors(f"labkit {args.command}", lambda: args.func(args), args.debug)


def _global_flags_first(argv: list[str]) -> list[str]:
    """`--debug` and `--trust-unverified` are accepted anywhere on the line."""
    flags = [a for a in argv if a in ("--debug", "--trust-unverified")]
    return flags + [a for a in argv if a not in flags]


if __name__ == "__main__":
    sys.exit(main())
