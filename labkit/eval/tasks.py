"""The offline task suite: seed 002's nine tiny-model tasks as lm-eval YAML tasks over local JSONL.

`build_tasks(data_dir, out)` (the `labkit eval build-tasks` command) writes, deterministically from
the data set's synthetic world and its held-out documents (never its training text):

| task | kind | from | random baseline |
|---|---|---|---|
| labkit_lambada | last word, loglikelihood (acc = greedy) | held-out sentences | 0 |
| labkit_completion | sentence ending, 4-way | held-out sentences | 0.25 |
| labkit_hellaswag | next sentence of a document, 4-way | held-out documents | 0.25 |
| labkit_piqa | the right procedure, 2-way | world facts | 0.5 |
| labkit_siqa | a person's life, 3-way | world people | 1/3 |
| labkit_arithmetic | a + b, 1 <= a, b <= 20, generated | - | 1/39 |
| labkit_association | the kind of a named thing, 4-way | world species, organisations | 0.25 |
| labkit_qa | a fact about an entity, 4-way | world facts | 0.25 |
| labkit_squad | extraction, exact match (F1 by `labkit eval`) | held-out retrieval passages | 0 |

Each task YAML names its JSONL by absolute path, so lm-eval finds it from any working directory;
`labkit_suite` is the group of all nine. The YAMLs use only metrics lm-eval itself has, so the
suite runs the same under `labkit lm-eval --model labkit` and plain `lm_eval --model hf` on an
exported checkpoint: SQuAD's exact match is lm-eval's `exact_match` with SQuAD's normalisation as
its `regexes_to_ignore` (`SQUAD_NORMALISATION`); SQuAD's token F1 is code, which a task directory
never carries, so `labkit eval` computes it from lm-eval's samples (`labkit.eval.metrics.f1`).
Hub tasks (hellaswag, piqa, social_iqa, arc_easy, lambada_openai) run through the same adapter
where a network exists.
"""

from __future__ import annotations

import json
import random
import re
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from labkit.data.build import load_manifest
from labkit.data.world import World, world_from_manifest
from labkit.errors import DataError
from labkit.fileio import check_output_dir

SUITE = "labkit_suite"
# 2: lm-eval's own metrics only (1 named labkit's registered `labkit_squad`); older suites rebuild.
SUITE_VERSION = 2
UNANSWERABLE = "not in the passage"
# SQuAD v1.1's answer normalisation (labkit.eval.metrics.normalize_answer) as lm-eval's
# exact_match applies it: these patterns removed in order, then lower case. Punctuation, then the
# articles, then whitespace (all of it: SQuAD collapses runs of it, so strings that differ only in
# where a space falls also match here).
SQUAD_NORMALISATION = ["[" + re.escape(string.punctuation) + "]", r"(?i)\b(a|an|the)\b", r"\s+"]


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [p for p in parts if len(p.split()) >= 6 and p[-1] in ".!?"]


def _held_out(data_dir: Path, split: str) -> list[dict[str, Any]]:
    path = data_dir / "text" / f"eval_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the data set with `labkit data build`")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _world(manifest: dict[str, Any]) -> World:
    return world_from_manifest(manifest)


def _choices(rng: random.Random, right: str, pool: list[str], k: int) -> tuple[list[str], int]:
    wrong = rng.sample(sorted({p for p in pool if p != right}), k - 1)
    options = [right, *wrong]
    rng.shuffle(options)
    return options, options.index(right)


# ------------------------------------------------------------------------------------ the nine
def lambada(docs, world, rng, n):
    out = []
    for doc in docs:
        sents = _sentences(doc["text"])
        for i, s in enumerate(sents):
            words = s[:-1].split()
            if len(words) >= 8 and words[-1].isalpha() and len(words[-1]) >= 3:
                context = " ".join([*sents[max(0, i - 3) : i], " ".join(words[:-1])])
                out.append({"context": context, "target": words[-1]})
                break
    return rng.sample(out, min(n, len(out)))


def completion(docs, world, rng, n):
    sents = [s for d in docs for s in _sentences(d["text"])]
    rng.shuffle(sents)
    endings = [" ".join(s.split()[-3:]) for s in sents]
    out = []
    for s, ending in zip(sents[:n], endings[:n], strict=True):
        options, label = _choices(rng, ending, endings, 4)
        out.append({"context": " ".join(s.split()[:-3]), "choices": options, "label": label})
    return out


def hellaswag(docs, world, rng, n):
    by_doc = [(d["labels"]["format"], _sentences(d["text"])) for d in docs]
    by_doc = [(f, s) for f, s in by_doc if len(s) >= 3]
    thirds: dict[str, list[str]] = {}
    for f, s in by_doc:
        thirds.setdefault(f, []).append(s[2])
    out = []
    for f, s in rng.sample(by_doc, min(n, len(by_doc))):
        pool = thirds[f] if len(set(thirds[f])) >= 4 else [x for v in thirds.values() for x in v]
        options, label = _choices(rng, s[2], pool, 4)
        out.append({"context": " ".join(s[:2]), "choices": options, "label": label})
    return out


def piqa(docs, world, rng, n):
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            a, b = rng.sample(world.organisations, 2)
            early, late = sorted([a.founded, b.founded])
            goal = (f"To find how many years passed between the founding of the {a.name} "
                    f"({a.founded}) and of the {b.name} ({b.founded}),")  # fmt: skip
            right, wrong = f"subtract {early} from {late}.", f"subtract {late} from {early}."
        else:
            p = rng.choice(world.people)
            goal = f"To find the age {p.name} (born {p.born}) turns in 2025,"
            right, wrong = f"subtract {p.born} from 2025.", f"subtract 2025 from {p.born}."
        options = [right, wrong]
        rng.shuffle(options)
        out.append({"context": goal, "choices": options, "label": options.index(right)})
    return out


def siqa(docs, world, rng, n):
    hobbies = [p.hobby for p in world.people]
    cities = [c.name for c in world.cities]
    out = []
    for p in rng.sample(world.people, min(n, len(world.people))):
        if rng.random() < 0.5:
            context = f"{p.name} works as a {p.occupation}. In free hours, {p.first} enjoys"
            options, label = _choices(rng, p.hobby, hobbies, 3)
        else:
            org = world.organisations[p.employer]
            context = f"{p.name} works for the {org.name}. Every evening, {p.first} goes home to"
            options, label = _choices(rng, world.cities[p.city].name, cities, 3)
        out.append({"context": context, "choices": options, "label": label})
    return out


def arithmetic(docs, world, rng, n):
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append({"context": f"Question: What is {a} plus {b}?\nAnswer:", "answer": str(a + b)})
    return out


def association(docs, world, rng, n):
    classes = sorted({s.cls for s in world.species})
    kinds = sorted({o.kind for o in world.organisations})
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            s = rng.choice(world.species)
            context, right, pool = f"The {s.name} is a kind of", s.cls, classes
        else:
            o = rng.choice(world.organisations)
            # the name holds its kind ("the X Guild"): ask about the field instead
            context = f"{o.name.rsplit(' ', 1)[0]}: a word that goes with it is"
            right, pool = o.kind, kinds
        options, label = _choices(rng, right, pool, 4)
        out.append({"context": context, "choices": options, "label": label})
    return out


def qa(docs, world, rng, n):
    occupations = sorted({p.occupation for p in world.people})
    countries = [c.name for c in world.countries]
    fields = sorted({o.field for o in world.organisations})
    out = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            p = rng.choice(world.people)
            q, right, pool = f"What is the occupation of {p.name}?", p.occupation, occupations
        elif kind == 1:
            c = rng.choice(world.cities)
            q, right, pool = (
                f"In which country is {c.name}?",
                world.countries[c.country].name,
                countries,
            )
        else:
            o = rng.choice(world.organisations)
            q, right, pool = f"What does the {o.name} focus on?", o.field, fields
        options, label = _choices(rng, right, pool, 4)
        out.append({"context": f"Question: {q}\nAnswer:", "choices": options, "label": label})
    return out


def squad(docs, world, rng, n):
    out = []
    for d in docs:
        passage = d["text"].split("\nQuestion:")[0]
        context = f"{passage}\nQuestion: {d['question']}\nAnswer:"
        answer = d["answer"] if d["answerable"] else UNANSWERABLE
        out.append({"context": context, "answer": answer, "answerable": d["answerable"]})
    return rng.sample(out, min(n, len(out)))


# ---------------------------------------------------------------------------------- the suite
Builder = Callable[[list, World, random.Random, int], list[dict[str, Any]]]
TASKS: dict[str, dict[str, Any]] = {
    "labkit_lambada": {"build": lambada, "source": "general", "kind": "loglikelihood",
                       "baseline": 0.0, "description": "the last word of a held-out sentence"},
    "labkit_completion": {"build": completion, "source": "general", "kind": "choice",
                          "baseline": 0.25, "description": "the ending of a held-out sentence"},
    "labkit_hellaswag": {"build": hellaswag, "source": "general", "kind": "choice",
                         "baseline": 0.25, "description": "the next sentence of a document"},
    "labkit_piqa": {"build": piqa, "source": None, "kind": "choice", "baseline": 0.5,
                    "description": "the right procedure for a goal"},
    "labkit_siqa": {"build": siqa, "source": None, "kind": "choice", "baseline": 1 / 3,
                    "description": "a person's hobby or home"},
    "labkit_arithmetic": {"build": arithmetic, "source": None, "kind": "generate",
                          "baseline": 1 / 39, "description": "a + b for 1 <= a, b <= 20"},
    "labkit_association": {"build": association, "source": None, "kind": "choice",
                           "baseline": 0.25, "description": "the kind a named thing belongs to"},
    "labkit_qa": {"build": qa, "source": None, "kind": "choice", "baseline": 0.25,
                  "description": "a fact about a person, city or organisation"},
    "labkit_squad": {"build": squad, "source": "retrieval", "kind": "extract", "baseline": 0.0,
                     "description": "extract the answer from a passage, or say it is not there"},
}  # fmt: skip


def _yaml(name: str, spec: dict[str, Any], data_file: Path) -> dict[str, Any]:
    base = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "metadata": {"version": 2.0 if spec["kind"] == "extract" else 1.0,
                     "random_baseline": spec["baseline"],
                     "description": spec["description"]},
    }  # fmt: skip
    mean = {"aggregation": "mean", "higher_is_better": True}
    if spec["kind"] == "choice":
        base |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc", **mean}, {"metric": "acc_norm", **mean}],
        }
    elif spec["kind"] == "loglikelihood":
        base |= {
            "output_type": "loglikelihood",
            "doc_to_target": "{{target}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", **mean},
            ],
        }
    else:
        base |= {
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False},
        }
        if spec["kind"] == "generate":
            base["metric_list"] = [{"metric": "exact_match", "ignore_case": True,
                                    "ignore_punctuation": True, **mean}]  # fmt: skip
            base["filter_list"] = [
                {
                    "name": "strip",
                    "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}],
                }
            ]
        else:
            # lm-eval's own exact_match with SQuAD's normalisation: the YAML stays data only
            base["metric_list"] = [{"metric": "exact_match", "ignore_case": True,
                                    "regexes_to_ignore": SQUAD_NORMALISATION, **mean}]  # fmt: skip
    return base


def build_tasks(
    data_dir: str | Path,
    out: str | Path | None = None,
    n: int = 200,
    seed: int = 0,
    overwrite: bool = False,
    names: Sequence[str] | None = None,
) -> Path:
    """Write the suite's JSONL files, task YAMLs and group into `out` (default DATA/tasks); `out`
    must be missing, empty or a suite written before (suite.json), unless `overwrite`. `names`
    builds only those tasks (an error if one cannot be built from this data set); by default
    every task the data set can build, skipping the others with a note."""
    data_dir = Path(data_dir).resolve()
    manifest = load_manifest(data_dir)
    out = Path(out).resolve() if out else data_dir / "tasks"
    check_output_dir(out, "suite.json", "task suite", overwrite)
    out.mkdir(parents=True, exist_ok=True)
    world = _world(manifest)
    # A data set without the synthetic world or retrieval (own text only) lacks these splits:
    # the tasks that need them are skipped with a note, not failed.
    sources = {
        s: _held_out(data_dir, s) if (data_dir / "text" / f"eval_{s}.jsonl").exists() else []
        for s in ("general", "retrieval")
    }
    unknown = sorted(set(names or ()) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown {SUITE} task(s) {unknown}: allowed {', '.join(TASKS)}")
    index = {}
    for name, spec in TASKS.items():
        if names is not None and name not in names:
            continue
        rng = random.Random(f"{name}-{seed}")
        docs = sources.get(spec["source"], [])
        if spec["source"] is None:  # built from the world's facts: only if the corpus taught them
            usable, what = "synthetic" in manifest["sources"], "no synthetic (world) source"
        else:
            usable, what = bool(docs), f"no eval split {spec['source']!r}"
        rows = spec["build"](docs, world, rng, n) if usable else []
        if not rows and names is not None:
            raise ValueError(f"{name} cannot be built from {data_dir}: it has {what}")
        if not rows:
            print(
                f"note: {name} skipped: {data_dir} has {what if not usable else 'no examples'} "
                "(for your own text: `labkit eval perplexity --split NAME`)",
                file=sys.stderr,
            )
            continue
        data_file = out / f"{name}.jsonl"
        data_file.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        text = yaml.safe_dump(_yaml(name, spec, data_file), sort_keys=False, width=100)
        (out / f"{name}.yaml").write_text(text)
        index[name] = {"examples": len(rows), "random_baseline": spec["baseline"],
                       "kind": spec["kind"], "description": spec["description"]}  # fmt: skip
    (out / "utils.py").unlink(missing_ok=True)  # written by older labkits: code, never loaded
    if not index:
        raise ValueError(
            f"none of the {SUITE} tasks can be built from {data_dir} (it has no eval_general or "
            "eval_retrieval split); evaluate own text with `labkit eval perplexity --split NAME`"
        )
    # `partial`: built for named tasks only; asking for the whole suite later builds the rest.
    metadata = {"version": float(SUITE_VERSION), "partial": names is not None}
    group = {"group": SUITE, "task": list(index), "metadata": metadata}
    (out / f"{SUITE}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    (out / "suite.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def suite_sizes(tasks_dir: str | Path) -> dict[str, int]:
    """{task: number of examples} of a built suite: the n of each score's interval."""
    index = json.loads((Path(tasks_dir) / "suite.json").read_text())
    return {name: entry["examples"] for name, entry in index.items()}


def random_baselines(tasks_dir: str | Path) -> dict[str, float]:
    index = json.loads((Path(tasks_dir) / "suite.json").read_text())
    return {name: entry["random_baseline"] for name, entry in index.items()}


# lm-eval renders task templates with an unsandboxed Jinja environment and imports Python for a
# `!function` tag, `class` or `include`: a task directory inside a data set may use none of them.
_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
_FORBIDDEN_KEYS = ("class", "include", "trust_remote_code", "custom_dataset")
_CODE_SUFFIXES = (".py", ".pyc", ".so")  # what `!function` or an import could load


def _template_problem(value: Any, key: str) -> str | None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _FORBIDDEN_KEYS:
                return f"key {k!r} (it can load code)"
            problem = _template_problem(v, f"{key}.{k}" if key else str(k))
            if problem:
                return problem
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problem = _template_problem(v, f"{key}[{i}]")
            if problem:
                return problem
    elif isinstance(value, str):
        rest = _PLACEHOLDER.sub("", value)
        if "{{" in rest or "{%" in rest or "}}" in rest:
            return f"{key}: a template beyond {{{{field}}}} placeholders ({value[:60]!r})"
    return None


def check_tasks_are_data(tasks_dir: str | Path) -> None:
    """Refuse a task directory that could run code when lm-eval loads it: no Python file
    anywhere in it (what a `!function` would import), every YAML must parse with
    `yaml.safe_load` (no `!function` tags), use only `{{field}}` templates, no `class`,
    `include` or remote code, and only local JSON data (`dataset_path: json`). Raises
    `DataError` naming the file. A single YAML file is checked with its directory."""
    tasks_dir = Path(tasks_dir)
    if tasks_dir.is_file():
        tasks_dir = tasks_dir.parent
    if not tasks_dir.is_dir():
        return  # nothing there can run; lm-eval reports the missing path itself
    rebuild = f"rebuild the suite with `labkit eval build-tasks --data {tasks_dir.parent}`"
    for path in sorted(tasks_dir.rglob("*")):
        if path.suffix in _CODE_SUFFIXES:
            raise DataError(
                f"{path} is code in a task directory: labkit never runs code from a data set "
                f"(a `!function` in a task YAML would import it); remove it, or {rebuild}"
            )
    for path in sorted([*tasks_dir.rglob("*.yaml"), *tasks_dir.rglob("*.yml")]):
        try:
            config = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            tag = (
                " (a `!function` tag: code from the data directory)"
                if "!function" in str(err)
                else ""
            )
            raise DataError(
                f"{path} is not plain YAML{tag}: labkit never loads code from a data set; {rebuild}"
            ) from err
        if not isinstance(config, dict):
            continue
        problem = _template_problem(config, "")
        if problem is None and config.get("dataset_path", "json") != "json":
            problem = f"dataset_path {config['dataset_path']!r} (only local json data)"
        if problem:
            raise DataError(f"{path}: {problem} is not allowed in a data set's tasks; {rebuild}")


_LM_EVAL_FLAGS = {"--include_path": "include_path", "--tasks": "tasks", "--config": "config"}
_LM_EVAL_SHORT = {"-t": "tasks", "-C": "config"}


def _lm_eval_flag(arg: str) -> tuple[str | None, str | None]:
    """(which of include_path/tasks/config `arg` sets, its attached value) for an lm-eval
    option: the long form, any prefix of it argparse would accept (`--include`), `--x=V`, and the
    short forms `-t V` / `-tV`."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        keys = {k for flag, k in _LM_EVAL_FLAGS.items() if len(name) > 3 and flag.startswith(name)}
        return (keys.pop(), value if eq else None) if len(keys) == 1 else (None, None)
    if arg[:2] in _LM_EVAL_SHORT:
        return _LM_EVAL_SHORT[arg[:2]], arg[2:].lstrip("=") or None
    return None, None


def lm_eval_task_paths(argv: Sequence[str]) -> list[Path]:
    """The task directories and task YAML files an lm-eval command line would load beyond
    lm-eval's own: `--include_path` (several joined by ':'), `--tasks` entries that are paths
    or globs, and the same two keys of a `--config` YAML."""
    import glob

    values: dict[str, list[str]] = {"include_path": [], "tasks": [], "config": []}
    key = None
    for arg in argv:
        flag, attached = _lm_eval_flag(arg)
        if flag is not None:
            key = flag
            if attached is not None:
                values[flag].append(attached)
                key = "tasks" if flag == "tasks" else None  # --tasks takes several values
        elif arg.startswith("-"):
            key = None
        elif key is not None:
            values[key].append(arg)
            key = "tasks" if key == "tasks" else None
    for config in values.pop("config"):
        if not Path(config).is_file():
            continue  # lm-eval reports it
        try:
            table = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"--config {config}: cannot read it as YAML ({err})") from err
        if isinstance(table, dict):
            for k in values:
                v = table.get(k)
                values[k] += [str(x) for x in v] if isinstance(v, list) else [str(v)] if v else []
    paths = [Path(p) for v in values["include_path"] for p in v.split(":") if p]
    for entry in (t for v in values["tasks"] for t in v.split(",") if t):
        matches = glob.glob(entry) if any(c in entry for c in "*?[") else [entry]
        paths += [Path(m) for m in matches if Path(m).exists()]
    return paths


def check_lm_eval_args(argv: Sequence[str]) -> None:
    """`check_tasks_are_data` on every task directory or file of an lm-eval command line
    (`labkit lm-eval ...`), before lm-eval reads any of them."""
    dirs = {(p.parent if p.is_file() else p).resolve() for p in lm_eval_task_paths(argv)}
    for path in sorted(dirs):
        check_tasks_are_data(path)


def harden_lm_eval() -> None:
    """Make lm-eval itself refuse code from task files, whatever reached it: its templates render
    in Jinja's sandbox (no `__globals__`, no attribute of an underscore), and a `!function` tag
    may import only from lm-eval's own task folders. Idempotent."""
    import lm_eval
    import lm_eval.utils
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not isinstance(lm_eval.utils.env, ImmutableSandboxedEnvironment):
        sandbox = ImmutableSandboxedEnvironment(
            loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True
        )
        sandbox.filters.update(lm_eval.utils.env.filters)
        lm_eval.utils.env = sandbox  # apply_template looks the module's `env` up per call
    try:
        from lm_eval.tasks import _yaml_loader
    except ImportError:  # an lm-eval without this loader: the directory check still applies
        return
    original = getattr(_yaml_loader, "_import_func_in_yml", None)
    if original is None or getattr(original, "labkit_guard", False):
        return
    own = Path(lm_eval.__file__).resolve().parent

    def guarded(qual: str, base_dir: Path):
        if not Path(base_dir).resolve().is_relative_to(own):
            raise DataError(
                f"a task YAML in {base_dir} asks to run `!function {qual}`: labkit never runs "
                "code from a task directory; use plain YAML tasks (`labkit eval build-tasks`)"
            )
        return original(qual, base_dir)

    guarded.labkit_guard = True  # type: ignore[attr-defined]
    _yaml_loader._import_func_in_yml = guarded
