"""`labkit data build`: generate, curate, split, tokenize, shard and mix; write the manifest.

Output directory layout:

    manifest.json            lineage: config, generator version and seed, sources and token counts,
                             curation reports, shard SHA-256s, tokenizer hash, realized dimensions,
                             mixing plans
    tokenizer.json           byte-level BPE, digits split, <|endoftext|>
    text/train.jsonl         one JSON object per document (text, source, labels, spans, ...)
    text/eval_<split>.jsonl  held-out documents (general, domain, code, retrieval, control, prose, ...)
    train/<source>_NNNNN.bin (+ .idx.npy)   token shards per source
    eval/<split>_NNNNN.bin   (+ .idx.npy)   token shards per eval split

The build happens in `<out>.partial` and replaces `<out>` only when complete, so an interrupted
build leaves the previous data set intact and no half-written shard behind. Nothing in the output
depends on the time or machine: the same config and seed rebuild byte-identical files.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from labkit.config import DataConfig
from labkit.data.code import generate_code, interpreter
from labkit.data.control import generate_control
from labkit.data.curation import curate, curation_warnings, load_text_source
from labkit.data.documents import DIMENSIONS, generate_documents, realized_distribution
from labkit.data.measures import TARGETS, corpus_measures, measure_value, target_met
from labkit.data.mixing import Stage, plan_mix
from labkit.data.prose import generate_prose, prose_lineage
from labkit.data.records import generate_records
from labkit.data.retrieval import generate_retrieval
from labkit.data.shards import write_shards
from labkit.data.stages import STAGES, StageStore, config_digest, run_stages, workers_for
from labkit.data.tokenizer import EOT, save_tokenizer, train_tokenizer
from labkit.data.world import GENERATOR_VERSION, world_from_manifest
from labkit.errors import DataError, DataNotFoundError, OutputExistsError
from labkit.fileio import atomic_write_bytes, check_output_dir, fsync_dir

MANIFEST_VERSION = 1
EVAL_SPLITS = ("general", "domain", "code", "retrieval", "control", "prose", "records")
# the training source each held-out split is drawn from (a user's sources: the split's own name)
EVAL_SPLIT_SOURCE = {"general": "synthetic", "domain": "synthetic"}


def _progress(quiet: bool):
    def wrap(items: Iterable, desc: str) -> Iterable:
        return tqdm(items, desc=desc, leave=False, disable=quiet)

    return wrap


def _jsonl(docs: list[dict[str, Any]]) -> bytes:
    # default=str: fields a user brings (e.g. parquet timestamps) are written as text
    return "".join(
        json.dumps(d, ensure_ascii=False, sort_keys=True, default=str) + "\n" for d in docs
    ).encode()


def _hash_split(doc_id: str, fraction: float) -> bool:
    import hashlib

    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def default_mixes(sources: list[str]) -> dict[str, list[Stage]]:
    """When a config names no mixes: the dense and the control corpus, each with every other
    source, mixed in proportion to size."""
    dense = [s for s in sources if s != "control"]
    mixes = {"dense": [Stage("main", 1.0, "natural", {s: 1.0 for s in dense})]}
    if "control" in sources:
        ctl = [s for s in sources if s != "synthetic"]
        mixes["control"] = [Stage("main", 1.0, "natural", {s: 1.0 for s in ctl})]
    return mixes


PARTIAL_MARKER = ".labkit-partial-build"  # marks `<out>.partial` as this builder's work dir
TASKS_DIR = "tasks"  # where `labkit eval build-tasks` writes its suite inside a data set
BUILD_DIRS = ("text", "train", "eval", TASKS_DIR, STAGES)


def build_files(manifest: dict[str, Any]) -> set[str]:
    """Every file (relative path) a labkit build wrote into its data set, read from its
    manifest: the manifest and tokenizer, the text files, each shard with its index and each
    source's document index."""
    files = {"manifest.json", manifest["tokenizer"].get("file", "tokenizer.json"),
             "text/train.jsonl"}  # fmt: skip
    files |= {f"text/eval_{split}.jsonl" for split in manifest.get("eval_splits") or {}}
    for kind in ("train", "eval"):
        for records in manifest["shards"][kind].values():
            for r in records:
                files |= {f"{kind}/{r['file']}", f"{kind}/{r['index']}"}
        for name in ((manifest.get("document_index") or {}).get(kind) or {}).values():
            files.add(f"{kind}/{name}")
    return files


def _suite_files(tasks: Path) -> set[str] | None:
    """The files of a task suite `labkit eval build-tasks` wrote (from its suite.json), or None
    when `tasks` is not such a suite."""
    try:
        index = json.loads((tasks / "suite.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    names = {"suite.json", "labkit_suite.yaml"}
    return names | {f"{t}{ext}" for t in index for ext in (".yaml", ".jsonl")}


def foreign_files(data_dir: str | Path) -> list[str]:
    """What a data set directory holds beyond what its build (its manifest lists it) and
    `labkit eval build-tasks` (DATA/tasks, listed in suite.json) wrote: the files a rebuild must
    not delete. A directory whose manifest cannot be read is a `DataError`."""
    data_dir = Path(data_dir)
    ours = build_files(load_manifest(data_dir))
    suite = _suite_files(data_dir / TASKS_DIR)
    foreign = []
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir).as_posix()
        top = rel.split("/", 1)[0]
        if path.is_dir() and not path.is_symlink():
            if ("/" in rel or top not in BUILD_DIRS) and not _inside(rel, foreign):
                foreign.append(rel + "/")  # a folder of the user's, even an empty one
            continue
        in_suite = top == TASKS_DIR and suite is not None and rel.count("/") == 1
        # stages/: a build's kept stages, which builds before this one left in the data set
        kept_stage = top == STAGES and rel.count("/") == 1 and rel.endswith(".json.gz")
        if rel in ours or kept_stage or (in_suite and rel.split("/", 1)[1] in suite):
            continue
        if not _inside(rel, foreign):
            foreign.append(rel)  # (inside a folder of the user's: the folder is named)
    return foreign


def _inside(rel: str, listed: list[str]) -> bool:
    return any(f.endswith("/") and rel.startswith(f) for f in listed)


def _check_replaceable(data_set: Path, overwrite: bool) -> None:
    """A previous labkit data set may be replaced only when it holds nothing but its build's
    files (and a task suite built from it); anything else is refused, naming the files."""
    if overwrite or not (data_set / "manifest.json").exists():
        return
    try:
        foreign = foreign_files(data_set)
    except DataError as err:
        raise OutputExistsError(
            f"{data_set} cannot be replaced: its manifest does not say which files the build "
            f"wrote ({err}); nothing was touched; choose another --out, or pass --overwrite"
        ) from None
    if foreign:
        listed = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise OutputExistsError(
            f"{data_set} holds {len(foreign)} file(s) its build did not write ({listed}): a "
            "rebuild replaces the whole directory, so nothing was touched; move them out of the "
            "data set, choose another --out, or pass --overwrite to delete them with it"
        )


def _check_outputs(out: Path, overwrite: bool, cfg: DataConfig | None = None) -> None:
    """Refuse (before any work) to replace anything labkit did not write: `out` must be missing,
    empty or a data set (manifest.json) holding only its build's files; `<out>.partial` a
    killed build's work dir; `<out>.old` a previous data set. A source read from inside `out` is
    refused even with `overwrite`: the build would delete its own input."""
    check_output_dir(out, "manifest.json", "data set", overwrite)
    _check_replaceable(out, overwrite)
    for sibling, marker in ((".partial", PARTIAL_MARKER), (".old", "manifest.json")):
        check_output_dir(out.with_name(out.name + sibling), marker, "data set build", overwrite)
    _check_replaceable(out.with_name(out.name + ".old"), overwrite)
    for name, src in cfg.sources.items() if cfg is not None else ():
        if src.enabled and src.path and Path(src.path).resolve().is_relative_to(out.resolve()):
            raise OutputExistsError(
                f"sources.{name}.path {src.path} is inside --out {out}: the build replaces that "
                "directory and would delete its own input; keep source files outside the data set"
            )


def build(
    cfg: DataConfig,
    out: str | Path,
    quiet: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Build the data set described by `cfg` into `out`; return the manifest. `out` is replaced
    only if it is missing, empty or a data set holding nothing but its build's files, unless
    `overwrite`. Sources are generated and curated in `workers` processes (default: every core);
    the stages a killed build finished are kept in `<out>.partial/stages/` and not redone when
    the same config builds again."""
    out = Path(out)
    _check_outputs(out, overwrite, cfg)
    work = out.with_name(out.name + ".partial")
    kept = work.with_name(work.name + ".stages")
    if work.exists():  # left by a killed build (checked above): keep its finished stages
        if (work / STAGES).is_dir():
            (work / STAGES).rename(kept)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / PARTIAL_MARKER).touch()
    if kept.exists():
        kept.rename(work / STAGES)
    try:
        return _build_into(cfg, out, work, quiet, workers, overwrite)
    except (KeyboardInterrupt, SystemExit):
        # `out` untouched; the work dir keeps only its finished stages (no half-written shard)
        for p in work.iterdir():
            if p.name not in (STAGES, PARTIAL_MARKER):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # `out` still holds the previous build, untouched
        raise


def _generate(cfg: DataConfig, source: str, synthetic: dict | None = None) -> dict[str, Any]:
    """One source's documents before curation: {"train": [...], "held": {split: [...]}} (the
    synthetic source also hands the control corpus its held-out documents)."""
    world = world_from_manifest({"config": cfg.to_dict()})
    seed = cfg.seed
    if source == "synthetic":
        train = generate_documents(world, cfg.synthetic.documents, seed, "train")
        evals = generate_documents(world, cfg.synthetic.eval_documents, seed, "eval")
        held = {"general": [d for d in evals if d["labels"]["domain"] != "stem"],
                "domain": [d for d in evals if d["labels"]["domain"] == "stem"]}  # fmt: skip
        return {"train": train, "held": held, "eval_synthetic": evals}
    if source == "control":
        # Over-supplied here, trimmed to the synthetic corpus's token count after tokenization.
        train = generate_control(world, synthetic["train"], seed, "train", 1.5)
        evals = generate_control(world, synthetic["eval_synthetic"], seed, "eval", 1.5)
        return {"train": train, "held": {"control": evals}}
    if source == "retrieval":
        r = cfg.retrieval
        train = generate_retrieval(world, r.documents, seed, "train", r.unanswerable)
        evals = generate_retrieval(world, r.eval_documents, seed, "eval", r.unanswerable)
        return {"train": train, "held": {"retrieval": evals}}
    if source == "code":
        code = generate_code(cfg.code.files + cfg.code.eval_files, cfg.code.max_chars, seed)
        return {"train": code[: cfg.code.files], "held": {"code": code[cfg.code.files :]}}
    if source == "records":
        train = generate_records(world, cfg.records.documents, seed, "train")
        evals = generate_records(world, cfg.records.eval_documents, seed, "eval")
        return {"train": train, "held": {"records": evals}}
    if source == "prose":
        docs, fraction = generate_prose(cfg.prose.documents), cfg.prose.eval_fraction
    else:
        src = cfg.sources[source]
        docs = load_text_source(
            source, src.path or None, src.hub or None, src.text_field, limit=src.limit or None
        )
        fraction = src.eval_fraction
    held = [d for d in docs if _hash_split(d["id"], fraction)]
    return {
        "train": [d for d in docs if not _hash_split(d["id"], fraction)],
        "held": {source: held},
    }


def _user_inputs(cfg: DataConfig) -> dict[str, Any]:
    """The files a user source reads, by size and mtime: a kept stage made from other contents
    is not reused."""
    stamps: dict[str, Any] = {}
    for name, src in cfg.sources.items():
        path = Path(src.path) if src.path else None
        if path is not None and path.exists():
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            stamps[name] = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return stamps


def generate_sources(
    cfg: DataConfig, store: StageStore | None = None, workers: int | None = 1
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Every source's train documents and every held-out split, before curation (generated in
    `workers` processes, kept in `store` as they finish; assembled in the serial order)."""
    names = ["synthetic"] if cfg.synthetic.enabled else []
    names += ["retrieval"] if cfg.retrieval.enabled else []
    names += ["control"] if cfg.control.enabled and cfg.synthetic.enabled else []
    names += [n for n in ("code", "prose", "records") if getattr(cfg, n).enabled]
    names += [n for n, s in cfg.sources.items() if s.enabled]
    tasks = {
        f"generate-{n}": (_generate, (cfg, n), ["generate-synthetic"] if n == "control" else [])
        for n in names
    }
    results = run_stages(tasks, store or _NoStore(), workers_for(workers, len(tasks)))
    train: dict[str, list[dict]] = {}
    held: dict[str, list[dict]] = {}
    for n in names:  # the serial order, whichever process finished first
        train[n] = results[f"generate-{n}"]["train"]
        held.update(results[f"generate-{n}"]["held"])
    for split in [s for s, docs in held.items() if not docs]:
        # e.g. eval_fraction = 0 or a source too small to hold any out: no eval_<split>
        print(f"note: eval split {split!r} is empty and is skipped", file=sys.stderr)
        del held[split]
    return train, held


class _NoStore:
    """A stage store that keeps nothing (generation outside a build's work directory)."""

    def get(self, key: str) -> None:
        return None

    def put(self, key: str, value: Any) -> None:
        pass


BUILD_STEPS = ("generated", "curated", "tokenizer trained", "tokenized", "sharded", "mixed",
               "manifest written", "done")  # fmt: skip


def _build_into(
    cfg: DataConfig,
    out: Path,
    work: Path,
    quiet: bool,
    workers: int | None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The build, step by step, into `work`, which then replaces `out`."""
    progress = _progress(quiet)
    steps = tqdm(total=len(BUILD_STEPS), desc="labkit data build", disable=quiet)

    def step(desc: str) -> None:
        steps.set_postfix_str(desc)
        steps.update(1)

    digest = config_digest({"config": cfg.to_dict(), "inputs": _user_inputs(cfg)})
    store = StageStore(work, digest)
    train, held = generate_sources(cfg, store, workers)
    step("generated")
    reports, warnings = _curate_sources(cfg, train, held, progress, store, workers)
    step("curated")
    order = cfg.source_names()
    tok = train_tokenizer(
        (d["text"] for name in order for d in train.get(name, [])),
        cfg.tokenizer.vocab_size,
        cfg.tokenizer.min_frequency,
    )
    tokenizer_sha = save_tokenizer(tok, work / "tokenizer.json")
    step("tokenizer trained")
    encoded = {
        kind: {n: _encode(tok, g[n], f"tokenize {kind}/{n}", progress) for n in sorted(g)}
        for kind, g in (("train", train), ("eval", held))
    }
    _trim_control(train, held, encoded)
    step("tokenized")
    _write_text(work, order, train, held)
    written = _write_shards(cfg, work, tok, train, held, encoded)
    step("sharded")
    mixes = _plan_mixes(cfg, order, written["tokens"]["train"])
    step("mixed")
    manifest = _manifest(cfg, train, held, tok, tokenizer_sha, written, mixes)
    manifest.update(curation=reports, curation_warnings=warnings)
    atomic_write_bytes(
        work / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    )
    step("manifest written")
    _check_outputs(out, overwrite, cfg)  # again: the user may have added files meanwhile
    _swap_into_place(work, out)
    step("done")
    steps.close()
    return manifest


def _curate_one(cfg: DataConfig, docs: list[dict], references: list[str],
                contamination: list[str], quality_sources: set[str] | None) -> dict[str, Any]:  # fmt: skip
    """One source's (or held-out split's) curation: {"kept": documents, "reports": stages}."""
    kept, reports = curate(docs, cfg.curation, references, contamination, quality_sources)
    return {"kept": kept, "reports": [vars(x) for x in reports]}


def _curate_sources(
    cfg: DataConfig,
    train: dict[str, list[dict]],
    held: dict[str, list[dict]],
    progress,
    store: StageStore | None = None,
    workers: int | None = 1,
) -> tuple[dict[str, list[dict]], list[str]]:
    """Curate every source in place (in `workers` processes, kept in `store`); return the
    per-source stage reports and the warnings (a stage removing more than 10 % of a source),
    which are also printed."""
    # Seed 003's prose heuristics target web-like text: the control corpus and user sources.
    quality_sources = {"control", "prose"} | {n for n, s in cfg.sources.items() if s.quality}
    # 13-gram contamination: eval task texts, and other sources' held-out text that is not
    # world-generated (the synthetic eval documents share the world's facts with train by design;
    # exact and near-duplicate screening guards them). A source's own held-out split is not
    # checked against it: copies are caught by dedup, and shared boilerplate is not a leak.
    task_texts: list[str] = []
    for f in cfg.curation.contamination_files:
        task_texts += _read_task_texts(Path(f))
    checked_splits = [s for s in held if s in ("code", "prose", *cfg.sources)]
    references = [d["text"] for docs in held.values() for d in docs]
    tasks = {}
    for name in train:
        contamination = task_texts + [
            d["text"] for split in checked_splits if split != name for d in held[split]
        ]
        args = (cfg, train[name], references, contamination, quality_sources)
        tasks[f"curate-{name}"] = (_curate_one, args, [])
    for split in held:  # eval text gets the same rewriting; dedup only within itself
        tasks[f"curate-eval-{split}"] = (_curate_one, (cfg, held[split], [], [], set()), [])
    bar = progress(range(len(tasks)), "curate")
    ticks = iter(bar)
    results = run_stages(tasks, store or _NoStore(), workers_for(workers, len(tasks)),
                         lambda key: next(ticks, None))  # fmt: skip
    reports: dict[str, list[dict]] = {}
    warnings: list[str] = []
    for name in list(train):
        train[name], reports[name] = (
            results[f"curate-{name}"]["kept"],
            results[f"curate-{name}"]["reports"],
        )
        if not train[name]:  # else a mix with nothing to draw from fails far from the cause
            rep = reports[name]
            removed = [f"{x['stage']} {x['docs_in'] - x['docs_out']}" for x in rep
                       if x["docs_in"] > x["docs_out"]]  # fmt: skip
            example = next((e for x in rep for e in x["examples"] if "reason" in e), None)
            raise DataError(
                f"curation removed every one of the {rep[0]['docs_in']} documents of source "
                f"{name!r} ({', '.join(removed)})"
                + (f", e.g. {example['id']}: {example['reason']}" if example else "")
                + "; see the quality settings in [curation] (e.g. min_words) or the source's text"
            )
        warnings += curation_warnings(name, reports[name])
    for line in warnings:
        print(line, file=sys.stderr)
    for split in list(held):
        held[split] = results[f"curate-eval-{split}"]["kept"]
    return reports, warnings


def _encode(tok, docs: list[dict], desc: str, progress) -> list[list[int]]:
    ids = []
    for i in progress(range(0, len(docs), 256), desc):
        ids += [e.ids for e in tok.encode_batch([d["text"] for d in docs[i : i + 256]])]
    return ids


def _trim_control(
    train: dict[str, list[dict]], held: dict[str, list[dict]], encoded: dict[str, dict]
) -> None:
    """The control corpus (over-supplied) is cut to the synthetic corpus's token count, in train
    and in eval, so the two arms differ in density, not in size."""
    dense_splits = {"train": ["synthetic"], "eval": ["general", "domain"]}
    for kind, groups in (("train", train), ("eval", held)):
        if "control" not in groups:
            continue
        target = sum(len(x) + 1 for n in dense_splits[kind] for x in encoded[kind][n])
        keep, used = 0, 0
        while keep < len(groups["control"]) and used < target:
            used += len(encoded[kind]["control"][keep]) + 1
            keep += 1
        groups["control"] = groups["control"][:keep]
        encoded[kind]["control"] = encoded[kind]["control"][:keep]


def _write_text(
    work: Path, order: list[str], train: dict[str, list[dict]], held: dict[str, list[dict]]
) -> None:
    (work / "text").mkdir()
    atomic_write_bytes(
        work / "text" / "train.jsonl", _jsonl([d for n in order for d in train.get(n, [])])
    )
    for split, docs in held.items():
        atomic_write_bytes(work / "text" / f"eval_{split}.jsonl", _jsonl(docs))


def _write_shards(
    cfg: DataConfig,
    work: Path,
    tok,
    train: dict[str, list[dict]],
    held: dict[str, list[dict]],
    encoded: dict[str, dict],
) -> dict[str, dict[str, dict]]:
    """Token shards and each source's document index; returns, per kind (train/eval) and
    source: `shards` (records), `tokens`, `documents` (counts) and `index` (file names)."""
    eot, vocab = tok.token_to_id(EOT), tok.get_vocab_size()
    written: dict[str, dict[str, dict]] = {
        key: {"train": {}, "eval": {}} for key in ("shards", "tokens", "documents", "index")
    }
    for kind, groups in (("train", train), ("eval", held)):
        for name in sorted(groups):
            ids = encoded[kind][name]
            recs = write_shards(ids, work / kind, name, eot, vocab, cfg.shards.tokens_per_shard)
            written["shards"][kind][name] = recs
            written["tokens"][kind][name] = sum(r["tokens"] for r in recs)
            written["documents"][kind][name] = len(ids)
            # The shards' document index: document k of `name`'s shards, in order, with its id
            # and the fields it was brought with (labels for probes).
            index_name = f"{name}_documents.jsonl"
            rows = [{"id": d.get("id"), "fields": d.get("fields", {})} for d in groups[name]]
            atomic_write_bytes(work / kind / index_name, _jsonl(rows))
            written["index"][kind][name] = index_name
    return written


def _plan_mixes(cfg: DataConfig, order: list[str], train_tokens: dict[str, int]) -> dict[str, Any]:
    sizes = {n: train_tokens.get(n, 0) for n in order}
    total = cfg.total_tokens or sum(sizes.values())
    stage_cfgs = {
        name: [
            Stage(s.name, s.fraction, s.sampling, dict(s.weights), s.alpha, s.max_epochs)
            for s in stages
        ]
        for name, stages in cfg.mixes.items()
    } or default_mixes(order)
    mixes = {}
    for name, stages in stage_cfgs.items():
        usable = {
            k: v
            for k, v in sizes.items()
            if any(k in s.weights for s in stages) or not any(s.weights for s in stages)
        }
        mixes[name] = plan_mix(usable, total, stages)
    return mixes


def _manifest(
    cfg: DataConfig,
    train: dict[str, list[dict]],
    held: dict[str, list[dict]],
    tok,
    tokenizer_sha: str,
    written: dict[str, dict[str, dict]],
    mixes: dict[str, Any],
) -> dict[str, Any]:
    """Everything a reader of the data set needs to trust it (curation is added by the caller)."""
    synth = train.get("synthetic", [])
    realized = realized_distribution(synth) if synth else {}
    text_blob = "\n\n".join(d["text"] for d in synth).encode()
    retrieval = train.get("retrieval", [])
    vocab = tok.get_vocab_size()
    counts = {
        kind: {n: {"documents": written["documents"][kind].get(n, 0),
                   "tokens": written["tokens"][kind].get(n, 0)} for n in names}
        for kind, names in (("train", cfg.source_names()), ("eval", sorted(held)))
    }  # fmt: skip
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": cfg.name,
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "code_source": interpreter() if cfg.code.enabled else None,
        "prose_source": prose_lineage() if cfg.prose.enabled else None,
        "python": sys.version.split()[0],
        "sources": counts["train"],
        "eval_splits": counts["eval"],
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": tokenizer_sha,
            "vocab_size": vocab,
            "eot_id": tok.token_to_id(EOT),
        },
        "token_dtype": "uint16" if vocab <= 65_536 else "uint32",
        "shards": written["shards"],
        "document_index": written["index"],
        "dimensions": realized,
        "dimension_targets": DIMENSIONS if synth else {},
        "dimension_max_abs_error_pp": round(
            100
            * max(
                abs(realized[d][k] - DIMENSIONS[d][k]) for d in DIMENSIONS for k in DIMENSIONS[d]
            ),
            3,
        )
        if synth
        else None,  # fmt: skip
        "retrieval_unanswerable_share": round(
            sum(not d["answerable"] for d in retrieval) / max(1, len(retrieval)), 4
        ),
        "gzip_ratio_synthetic": round(
            len(gzip.compress(text_blob, mtime=0)) / max(1, len(text_blob)), 4
        ),
        "mixes": mixes,
        "measures": corpus_measures(train, held, mixes),
    }


def _swap_into_place(work: Path, out: Path) -> None:
    """`work` becomes `out`; a previous build is moved aside first and removed last. The kept
    stages serve only a build that was interrupted: a finished data set holds none."""
    (work / PARTIAL_MARKER).unlink()
    shutil.rmtree(work / STAGES, ignore_errors=True)
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    work.rename(out)
    fsync_dir(out.parent)
    if old.exists():
        if (old / TASKS_DIR / "suite.json").exists():
            print(
                f"note: removed the task suite {out / TASKS_DIR} built from the previous data set; "
                f"`labkit eval build-tasks --data {out}` builds it from this one",
                file=sys.stderr,
            )
        shutil.rmtree(old)


def _read_task_texts(path: Path) -> list[str]:
    """Eval task texts for the contamination filter: a .jsonl (every string value of every object)
    or a plain text file (one text per line)."""
    if not path.exists():
        raise FileNotFoundError(f"curation.contamination_files: {path} not found")
    if path.suffix == ".jsonl":
        texts = []
        for line in path.read_text().splitlines():
            if line.strip():
                obj = json.loads(line)
                texts += [v for v in obj.values() if isinstance(v, str)]
        return texts
    return [line for line in path.read_text().splitlines() if line.strip()]


# What readers of a manifest rely on: a manifest without them is not a data set.
MANIFEST_KEYS = {"shards": ("train", "eval"), "tokenizer": ("vocab_size", "eot_id"), "mixes": ()}


def trained_splits(manifest: dict[str, Any], mix: str, tokens: int | None = None) -> list[str]:
    """The held-out splits whose source has tokens in `mix`'s stages that start before `tokens`
    (all stages when None): the splits a run on that mix trained on."""
    stages = manifest["mixes"][mix]
    seen = {
        source
        for stage in stages
        if tokens is None or stage["start_token"] < tokens
        for source, n in stage["tokens"].items()
        if n > 0
    }
    return sorted(s for s in manifest["eval_splits"] if EVAL_SPLIT_SOURCE.get(s, s) in seen)


def rebuild_command(data_dir: str | Path) -> str:
    """The command that rebuilds `data_dir`: with the shipped config it is named after (data/demo:
    pretrain/configs/data/demo.toml), else with the config of the user's own data set."""
    from labkit.resources import configs_dir

    name = Path(data_dir).name
    shipped = (configs_dir() / "data" / f"{name}.toml").exists()
    config = f"pretrain/configs/data/{name}.toml" if shipped else "YOUR_CONFIG.toml"
    return f"`labkit data build --config {config} --out {data_dir}`" + (
        "" if shipped else " (the config it was built from)"
    )


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a built data set; a missing, unreadable or incomplete one is a
    `DataError` naming the file and the command that builds it."""
    path = Path(data_dir) / "manifest.json"
    rebuild = rebuild_command(data_dir)
    if not path.exists():
        raise DataNotFoundError(f"{path} not found: build the data set first, e.g. {rebuild}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}): rebuild it with {rebuild}") from err
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a data set manifest: rebuild it with {rebuild}")
    for key, inner in MANIFEST_KEYS.items():
        value = manifest.get(key)
        missing = [f"{key}.{k}" for k in inner if not isinstance(value, dict) or k not in value]
        if not isinstance(value, dict) or missing:
            raise DataError(
                f"{path} lacks {missing or [key]}: not a complete data set; rebuild it with "
                f"{rebuild}"
            )
    return manifest


def tokenizer_bytes(data_dir: str | Path, manifest: dict[str, Any] | None = None) -> bytes:
    """The bytes of a built data set's tokenizer.json, checked against the SHA-256 its manifest
    records: a tokenizer changed after the build (two ids swapped) would silently change what
    every token of every shard means. A mismatch is a `DataError` naming the file."""
    import hashlib

    data_dir = Path(data_dir)
    manifest = manifest if manifest is not None else load_manifest(data_dir)
    path = data_dir / manifest["tokenizer"].get("file", "tokenizer.json")
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing from the data set: rebuild it with "
                                f"{rebuild_command(data_dir)}")  # fmt: skip
    raw = path.read_bytes()
    expected = manifest["tokenizer"].get("sha256")
    if hashlib.sha256(raw).hexdigest() != expected:
        what = "does not match the SHA-256" if expected else "has no SHA-256"
        raise DataError(
            f"{path} {what} in {data_dir / 'manifest.json'} (changed after the build?): its "
            "token ids would no longer mean what the shards were written with; restore it or "
            f"rebuild the data set with {rebuild_command(data_dir)}"
        )
    return raw


def load_data_tokenizer(data_dir: str | Path, manifest: dict[str, Any] | None = None):
    """The verified tokenizer of a built data set (`tokenizer_bytes`), as a `tokenizers`
    Tokenizer."""
    from labkit.data.tokenizer import parse_tokenizer

    data_dir = Path(data_dir)
    return parse_tokenizer(tokenizer_bytes(data_dir, manifest), data_dir / "tokenizer.json")


def document_lengths(data_dir: str | Path, split: str = "train") -> dict[str, np.ndarray]:
    """Token length of every document per source (for mixing), from the shard indexes."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    out = {}
    for source, recs in manifest["shards"][split].items():
        lengths = []
        for r in recs:
            offsets = np.load(data_dir / split / r["index"])
            lengths.append(np.diff(np.append(offsets, r["tokens"])))
        out[source] = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return out


STAGE_EDITS = {"normalize": "NFKC normalisation, control characters removed",
               "pii": "e-mail addresses, IPs, phone and social security numbers replaced"}  # fmt: skip


def dataset_card(data_dir: str | Path) -> str:
    """The dataset card: every dimension's target vs realized share, sources, sizes, stages."""
    m = load_manifest(data_dir)
    lines = [
        f"# Dataset card: {m['name']} (seed {m['seed']}, generator v{m['generator_version']})",
        "",
    ]
    lines.append("## Sources (train)")
    lines.append(f"{'source':<14}{'documents':>11}{'tokens':>12}")
    for name, s in m["sources"].items():
        lines.append(f"{name:<14}{s['documents']:>11,}{s['tokens']:>12,}")
    lines.append("")
    lines.append("## Eval splits (held out before tokenization)")
    for name, s in m["eval_splits"].items():
        lines.append(f"{name:<14}{s['documents']:>11,}{s['tokens']:>12,}")
    lines.append("")
    if m["dimension_targets"]:  # none when the synthetic source is disabled
        lines.append(
            f"## Dimensions of the synthetic corpus "
            f"(max |error| {m['dimension_max_abs_error_pp']} pp)"
        )
    for dim, targets in m["dimension_targets"].items():
        lines.append(f"{dim}")
        for k, t in targets.items():
            real = m["dimensions"][dim][k]
            lines.append(
                f"  {k:<24} target {100 * t:5.1f}%  realized {100 * real:5.1f}%  ({100 * (real - t):+.1f} pp)"
            )
    lines.append("")
    lines.append("## Curation (documents in -> out per stage; text rewritten per stage)")
    for source, stages in m["curation"].items():
        flow = " -> ".join(f"{s['stage']} {s['docs_out']}" for s in stages)
        lines.append(f"{source:<12} {stages[0]['docs_in']} -> {flow}")
        for st in stages:
            rewritten = st["detail"].get("rewritten", 0)
            if rewritten:  # the text the model sees differs from the text brought
                what = ", ".join(f"{v} {k}" for k, v in st["detail"].items() if k != "rewritten")
                lines.append(
                    f"  {st['stage']}: changed the text of {rewritten} of {st['docs_in']} "
                    f"documents ({what or STAGE_EDITS.get(st['stage'], 'rewritten')})"
                )
                for ex in st.get("examples", [])[:1]:
                    lines.append(f"    - {ex['id']}: {ex['before']!r} -> {ex['after']!r}")
                continue
            removed = st["docs_in"] - st["docs_out"]
            if removed:
                detail = ", ".join(f"{k} {v}" for k, v in st["detail"].items())
                lines.append(
                    f"  {st['stage']}: removed {removed}" + (f" ({detail})" if detail else "")
                )
                for ex in st.get("examples", []):
                    lines.append(f"    - {ex['id']}: {ex['reason']} | {ex['text'][:100]}")
    for line in m.get("curation_warnings", []):
        lines.append(line)
    lines.append("")
    lines.append(
        f"Tokenizer: vocab {m['tokenizer']['vocab_size']}, sha256 {m['tokenizer']['sha256'][:16]}..."
    )
    if "retrieval" in m["sources"]:
        share = m["retrieval_unanswerable_share"]
        lines.append(f"Retrieval unanswerable share: {100 * share:.1f}%")
    lines.append("")
    lines += _measure_lines(m)
    lines.append("")
    lines.append("## Mixes")
    for name, stages in m["mixes"].items():
        for st in stages:
            probs = ", ".join(f"{k} {v:.2f}" for k, v in st["probabilities"].items())
            lines.append(
                f"{name}/{st['name']}: tokens {st['start_token']:,}-{st['end_token']:,} ({st['sampling']}): {probs}"
            )
    return "\n".join(lines)


def _measure_lines(m: dict[str, Any]) -> list[str]:
    """The corpus measures next to their targets, from the manifest."""
    if "measures" not in m:
        return ["## Measures: not in this manifest (built by an older labkit; rebuild it)"]
    ms = m["measures"]
    lines = ["## Measures (target; ok / MISSED)"]
    for key, (op, bound) in TARGETS.items():
        value, met = measure_value(ms, key), target_met(ms, key)
        verdict = "n/a" if met is None else ("ok" if met else "MISSED")
        lines.append(f"  {key:<38} {value!s:>8}   target {op} {bound:<6} {verdict}")
    for name, share in ms["duplicate_sentence_share"].items():
        lines.append(
            f"  duplicate-sentence share {name:<13} {share}  gzip ratio {ms['gzip_ratio'][name]}"
        )
    cp, ec = ms["copy_pressure"], ms["entity_counts"]
    lines.append(
        f"  copy pressure: {cp['rare_repeated_mentions']:,} of {cp['repeated_mentions']:,} repeated "
        f"in-document entity mentions are of entities in <= 2 training documents"
    )
    lines.append(
        f"  entities in the synthetic train text: {ec['entities']:,} ({ec['rare_entities']:,} in "
        f"<= 2 documents); core entities: median {ec['core_median_documents_per_entity']} documents each"
    )
    for example in ms["leaks"]["examples"]:
        lines.append(f"  leak: {example}")
    if ms.get("arms"):
        a = ms["arms"]
        lines.append(
            f"  dense vs control: same stage boundaries {a['same_stage_boundaries']}; largest gap in "
            f"any other source's share {a['max_other_source_gap_pp']} pp; they differ in {a['differs_in']}"
        )
    lines.append("## Source shares per mix and stage")
    for name, stages in ms["source_shares"].items():
        for st_name, st in stages.items():
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in st["shares"].items())
            lines.append(
                f"  {name}/{st_name} [{st['start_token']:,}-{st['end_token']:,}]: {shares}"
            )
    return lines


def sample_documents(
    data_dir: str | Path,
    sources: tuple[str, ...] | None = None,
    max_chars: int = 2000,
) -> str:
    """The first train document of each source (default: every source of the data set, a
    user's own included), as the card's `--samples` section."""
    path = Path(data_dir) / "text" / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the data set with `labkit data build`")
    first: dict[str, dict] = {}
    with path.open() as f:
        for line in f:
            doc = json.loads(line)
            first.setdefault(doc["source"], doc)
    if sources is None:
        sources = tuple(load_manifest(data_dir)["sources"]) or tuple(first)
    lines = ["## Sample documents (the first train document of each source)"]
    for name in sources:
        if name in first:
            labels = first[name].get("labels")
            tag = f" ({', '.join(labels.values())})" if labels else ""
            text = first[name]["text"]
            if len(text) > max_chars:  # long real documents: their opening is enough to judge
                cut = text.rfind("\n", 0, max_chars)
                text = (
                    text[: cut if cut > 0 else max_chars]
                    + f"\n[… {len(text) - max(cut, 0):,} more characters]"
                )
            lines += ["", f"### {name}: {first[name]['id']}{tag}", "", text]
    return "\n".join(lines)
