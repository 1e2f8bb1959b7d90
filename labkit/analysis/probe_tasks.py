"""Probe tasks from specs (the YAML files in probes/, parsed to dicts by the caller): which text,
which token positions, which label.

    name: person_occupation
    source: {kind: world, documents: 400}     # world | retrieval | data (a split of the data set);
                                              # `stream: NAME` shares documents between specs
    positions: {kind: span, type: person}     # all_tokens | span | last_token | document_mean |
                                              # question_end
    label: {kind: entity_attr, entity: people, attr: occupation}
                                              # token_is_digit | doc_label | entity_attr |
                                              # number_value | answerable |
                                              # context labels (all_tokens): seen_before |
                                              # since_last | in_string | bracket_depth;
                                              # repeat_mention (span) |
                                              # label_field (any field of your own data:
                                              # {kind: label_field, field: topic})
    task: classification                      # or regression
    control: token_type                       # or document, or entity (span targets: one random
                                              # label per entity or world quantity)

World-generated sources use the world the model was trained on (seed and sizes from the data
manifest) with a separate document stream, so entity attributes are the model's own facts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labkit.errors import ConfigError

DOCUMENTS = 300  # documents a spec reads when its source names no number

POSITION_KINDS = ("all_tokens", "span", "last_token", "document_mean", "question_end")
LABEL_KINDS = (
    "token_is_digit", "doc_label", "label_field", "entity_attr", "number_value", "answerable",
    "seen_before", "since_last", "in_string", "bracket_depth", "repeat_mention",
)  # fmt: skip
# Token labels that depend on the context before the token, not on the token itself: a probe
# that reads them shows what the model carries from context (its own bag of tokens cannot).
CONTEXT_LABELS = ("seen_before", "since_last", "in_string", "bracket_depth")
SINCE_LAST_BUCKETS = (8, 32, 128)  # distance to the previous occurrence: <=8, <=32, <=128, more
MAX_BRACKET_DEPTH = 3  # depth 0, 1, 2, 3 or more
SPAN_TYPES = {"people": "person", "cities": "city", "organisations": "organisation",
              "elements": "element", "species": "species", "events": "event"}  # fmt: skip


@dataclass
class ProbeData:
    sequences: list[list[int]]
    positions: list[list[int]]  # per sequence, the token positions read
    labels: np.ndarray  # one per example
    types: np.ndarray  # control-task type per example (token id or document index)
    groups: np.ndarray  # document index per example
    task: str
    document_mean: bool  # average a document's positions into one example

    @property
    def n_examples(self) -> int:
        """Examples the probe is fit and scored on: one per document when positions are
        averaged over a document, else one per position."""
        return len(np.unique(self.groups)) if self.document_mean else len(self.labels)


def with_bos(data: ProbeData, bos: int | None) -> ProbeData:
    """`data` with `bos` (a model's first token, its `bos_token_id`) before every sequence and
    the probed positions moved with their tokens; unchanged for None."""
    if bos is None:
        return data
    return dataclasses.replace(
        data,
        sequences=[[bos, *s] for s in data.sequences],
        positions=[[p + 1 for p in pos] for pos in data.positions],
    )


CONTROLS = ("token_type", "document", "entity")


def validate_spec(spec: dict[str, Any]) -> None:
    for key in ("name", "source", "positions", "label"):
        if key not in spec:
            raise ValueError(f"probe spec {spec.get('name', '?')!r} has no {key!r}")
        if key != "name" and not isinstance(spec[key], dict):
            raise ValueError(f"probe spec {spec['name']!r}: {key} must be a mapping, got "
                             f"{spec[key]!r}")  # fmt: skip
    if spec["positions"].get("kind") not in POSITION_KINDS:
        raise ValueError(f"probe {spec['name']}: positions.kind must be one of {POSITION_KINDS}")
    if spec["label"].get("kind") not in LABEL_KINDS:
        raise ValueError(f"probe {spec['name']}: label.kind must be one of {LABEL_KINDS}")
    if spec.get("control", "token_type") not in CONTROLS:
        raise ValueError(f"probe {spec['name']}: control must be one of {CONTROLS}")
    if spec.get("control") == "entity" and spec["positions"]["kind"] != "span":
        raise ValueError(f"probe {spec['name']}: control 'entity' needs span positions")
    if spec.get("task", "classification") not in ("classification", "regression"):
        raise ValueError(f"probe {spec['name']}: task must be classification or regression")
    label, positions = spec["label"]["kind"], spec["positions"]["kind"]
    if label in CONTEXT_LABELS and positions != "all_tokens":
        raise ValueError(f"probe {spec['name']}: label kind {label!r} needs positions all_tokens")
    if label == "repeat_mention" and positions != "span":
        raise ValueError(f"probe {spec['name']}: label kind 'repeat_mention' needs span positions")


def token_level(spec: dict[str, Any]) -> bool:
    """Whether a target labels single tokens (its null is the Hewitt-Liang control task and it
    has a position baseline) rather than whole documents (a permutation null)."""
    label = spec["label"]["kind"]
    return spec["positions"]["kind"] == "span" or label in (*CONTEXT_LABELS, "token_is_digit")


@dataclass(frozen=True)
class ProbeSpec:
    """A probe spec (probes/*.yaml), validated once when parsed. Reads like the YAML mapping
    too (`spec["label"]["kind"]`, `spec.get("control")`), so code written for dicts keeps
    working."""

    name: str
    source: dict[str, Any]
    positions: dict[str, Any]
    label: dict[str, Any]
    task: str = "classification"
    control: str = "token_type"
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, spec: dict[str, Any] | ProbeSpec, max_documents: int | None = None) -> ProbeSpec:
        """A spec from its YAML mapping; a wrong key or value is a `ValueError` naming it."""
        if isinstance(spec, ProbeSpec):
            spec = spec.raw
        validate_spec(spec)
        raw = json.loads(json.dumps(spec))  # a private copy
        if max_documents:
            raw["source"]["documents"] = min(
                raw["source"].get("documents", DOCUMENTS), max_documents
            )
        return cls(
            name=raw["name"],
            source=raw["source"],
            positions=raw["positions"],
            label=raw["label"],
            task=raw.get("task", "classification"),
            control=raw.get("control", "token_type"),
            description=raw.get("description", ""),
            raw=raw,
        )

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


def probe_targets(probes_dir: str | Path | None = None) -> list[str]:
    """The names of the probe specs in `probes_dir` (default: the shipped probes/)."""
    from labkit.resources import probes_dir as shipped_probes

    return sorted(p.stem for p in Path(probes_dir or shipped_probes()).glob("*.yaml"))


def load_probe_spec(
    target: str, probes_dir: str | Path | None = None, max_documents: int | None = None
) -> ProbeSpec:
    """The probe spec `target` of `probes_dir` (default: the shipped probes/), parsed once."""
    import yaml

    from labkit.resources import probes_dir as shipped_probes

    probes_dir = Path(probes_dir or shipped_probes())
    path = probes_dir / f"{target}.yaml"
    if not path.exists():
        raise ValueError(f"unknown target {target!r}; targets in {probes_dir}: "
                         f"{probe_targets(probes_dir)}")  # fmt: skip
    try:
        spec = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        tag = " (a Python tag: specs are plain data, never objects)" if "python" in str(err) else ""
        raise ConfigError(
            f"{path} is not a plain YAML probe spec{where}: {problem}{tag}; see probes/*.yaml "
            "for the format"
        ) from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} is not a probe spec (a YAML mapping with name, source, "
                          "positions and label)")  # fmt: skip
    return ProbeSpec.parse(spec, max_documents)


def _documents(spec: dict, manifest: dict, data_dir: Path | None, world) -> list[dict]:
    from labkit.data.documents import generate_documents
    from labkit.data.retrieval import generate_retrieval

    source = spec["source"]
    kind = source.get("kind", "world")
    if kind == "data":
        if data_dir is None:
            raise ValueError(f"probe {spec['name']}: source kind 'data' needs the data set")
        path = data_dir / "text" / f"{source['split']}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"probe {spec['name']}: {path} not found")
        docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return docs[: source.get("documents", len(docs))]
    n, seed = source.get("documents", DOCUMENTS), source.get("seed", manifest["config"]["seed"])
    # specs naming the same `stream` read the same documents (one forward pass serves them all)
    split = f"probe-{source.get('stream', spec['name'])}"
    key = (json.dumps(manifest, sort_keys=True, default=str), kind, n, seed, split)
    if kind in ("world", "retrieval") and key not in _GENERATED:
        make = generate_documents if kind == "world" else generate_retrieval
        if len(_GENERATED) >= 4:  # generation is deterministic: keep a few streams only
            _GENERATED.clear()
        _GENERATED[key] = make(world, n, seed, split=split)
    if key in _GENERATED:
        return _GENERATED[key]
    raise ValueError(f"probe {spec['name']}: source.kind must be world, retrieval or data")


def unseen_text_warning(spec: dict[str, Any], manifest: dict) -> str | None:
    """A warning when the spec probes text of a kind the run's corpus lacked (e.g. a shipped,
    world-generated probe on a run trained on own text only): its numbers would say little."""
    kind = spec["source"].get("kind", "world")
    needs = {"world": "synthetic", "retrieval": "retrieval"}.get(kind)
    trained = manifest.get("sources", {}).get(needs, {}).get("tokens", 0) if needs else 1
    if trained:
        return None
    return (
        f"warning: probe {spec['name']} reads {kind}-generated text, but the run's data set has no "
        f"{needs!r} source: the model never trained on text like it; for own text use a "
        "`kind: data` spec (README: Your own data)"
    )


_GENERATED: dict[tuple, list[dict]] = {}
_WORLDS: dict[str, Any] = {}


def _world(manifest: dict):
    from labkit.data.world import world_from_manifest

    key = json.dumps(manifest, sort_keys=True, default=str)
    if key not in _WORLDS:  # the world is a pure function of the manifest: build it once
        _WORLDS.clear()
        _WORLDS[key] = world_from_manifest(manifest)
    return _WORLDS[key]


def build_probe_data(
    spec: dict[str, Any],
    tokenizer,
    manifest: dict,
    data_dir: Path | None = None,
    max_len: int = 256,
) -> ProbeData:
    """Tokenize the spec's documents and pick its positions and labels. `tokenizer` is a
    `tokenizers.Tokenizer` (the run's tokenizer.json)."""
    spec = ProbeSpec.parse(spec)
    world_needed = (
        spec["source"].get("kind", "world") != "data" or spec["label"]["kind"] == "entity_attr"
    )
    world = _world(manifest) if world_needed else None  # built once, for the text and the labels
    docs = _documents(spec, manifest, data_dir, world)
    pos_spec, label_spec = spec["positions"], spec["label"]
    sequences, positions, labels, types, groups = [], [], [], [], []
    for d_idx, doc in enumerate(docs):
        enc = tokenizer.encode(doc["text"])
        ids, offsets = enc.ids[:max_len], enc.offsets[:max_len]
        if len(ids) < 2:
            continue
        picked: list[tuple[int, Any]] = []  # (position, label)
        kind = pos_spec["kind"]
        if label_spec["kind"] == "token_is_digit":
            picked = [
                (i, int(tokenizer.id_to_token(t).lstrip("Ġ").isdigit())) for i, t in enumerate(ids)
            ]
        elif label_spec["kind"] in CONTEXT_LABELS:
            picked = context_labels(label_spec["kind"], ids, offsets, doc["text"])
        elif kind in ("document_mean", "last_token"):
            value = _doc_label(doc, label_spec, spec["name"])
            picked = (
                [(i, value) for i in range(len(ids))]
                if kind == "document_mean"
                else [(len(ids) - 1, value)]
            )
        elif kind == "question_end":
            end = doc["text"].find("\nAnswer:")
            last = max((i for i, (s, e) in enumerate(offsets) if e <= end), default=None)
            if last is not None:
                picked = [(last, _doc_label(doc, label_spec, spec["name"]))]
        elif kind == "span":
            ids_of_spans, mentioned = {}, set()
            for span in sorted(doc.get("spans", []), key=lambda sp: sp["start"]):
                if span["type"] != pos_spec["type"]:
                    continue
                toks = [
                    i for i, (s, e) in enumerate(offsets) if s < span["end"] and e > span["start"]
                ]
                if not toks:
                    continue
                # entity identity for the control task: its id, else (own spans) its text
                key = span.get("id", doc["text"][span["start"] : span["end"]])
                if label_spec["kind"] == "repeat_mention":  # mentioned earlier in this text?
                    value = int(key in mentioned)
                    mentioned.add(key)
                else:
                    value = _span_label(span, label_spec, world, spec["name"], doc.get("cast", {}))
                if value is not None:
                    picked.append((toks[-1], value))  # read at the mention's last token
                    ids_of_spans[toks[-1]] = f"{span['type']}:{key}"
        elif kind == "all_tokens":
            value = _doc_label(doc, label_spec, spec["name"])
            picked = [(i, value) for i in range(len(ids))]
        if not picked:
            continue
        sequences.append(ids)
        positions.append([p for p, _ in picked])
        labels += [v for _, v in picked]
        control = spec.get("control", "token_type")
        if control == "entity":  # one random label per entity / world quantity (span id)
            types += [ids_of_spans[p] for p, _ in picked]
        elif control == "document" or kind == "document_mean":
            types += [f"doc{d_idx}" for _ in picked]
        else:  # token_type: one random label per token id (Hewitt & Liang)
            types += [f"tok{ids[p]}" for p, _ in picked]
        groups += [d_idx] * len(picked)
    if not labels:
        raise ValueError(f"probe {spec['name']}: no examples (check positions and label)")
    source = spec["source"]
    asked = source.get("documents", None if source.get("kind", "world") == "data" else DOCUMENTS)
    used = len(set(groups))
    if asked and used < asked:  # say so: the table's numbers rest on fewer documents
        import sys

        why = [f"the data set holds {len(docs)}"] if len(docs) < asked else []
        if len(docs) > used:
            why.append(f"{len(docs) - used} gave no {pos_spec['kind']} position with a label")
        print(f"note: probe {spec['name']} asks for {asked} documents; {used} were used "
              f"({'; '.join(why)})", file=sys.stderr)  # fmt: skip
    task = spec.get("task", "classification")
    mean = pos_spec["kind"] == "document_mean"
    arrays = np.asarray(labels), np.asarray(types), np.asarray(groups)
    return ProbeData(sequences, positions, *arrays, task, mean)


def _doc_label(doc: dict, label: dict, name: str) -> Any:
    if label["kind"] == "doc_label":
        if "labels" not in doc or label["key"] not in doc["labels"]:
            raise ValueError(f"probe {name}: documents carry no label {label['key']!r}")
        return doc["labels"][label["key"]]
    if label["kind"] == "label_field":  # a field the user's jsonl brought (kept by the build)
        key = label.get("field")
        fields = doc.get("fields") or {}
        if not key:
            raise ValueError(f"probe {name}: label kind 'label_field' needs `field: NAME`")
        if key not in fields or fields[key] is None:
            raise ValueError(
                f"probe {name}: document {doc.get('id')!r} has no field {key!r}; its fields are "
                f"{sorted(fields)} (fields come from the source's jsonl, kept by the build)"
            )
        return fields[key]
    if label["kind"] == "answerable":
        return int(bool(doc["answerable"]))
    raise ValueError(f"probe {name}: label kind {label['kind']!r} does not fit these positions")


def _span_label(span: dict, label: dict, world, name: str, cast: dict | None = None) -> Any:
    if label["kind"] == "entity_attr":
        if cast and span["id"] in cast:  # a one-off person of this document: its own record
            return cast[span["id"]].get(label["attr"])
        entity = getattr(world, label["entity"])[int(span["id"])]
        return getattr(entity, label["attr"])
    if label["kind"] == "number_value":
        if span["id"] == "result" or span["id"].endswith(".date"):
            return None
        try:
            return math.log10(1 + abs(float(span["attr"])))
        except (KeyError, ValueError):
            return None
    if label["kind"] == "label_field":  # a key of the user's own span ({start, end, type, KEY})
        return span.get(label.get("field"))
    raise ValueError(f"probe {name}: label kind {label['kind']!r} does not fit span positions")


def context_labels(
    kind: str, ids: list[int], offsets: list[tuple[int, int]], text: str
) -> list[tuple[int, int]]:
    """(position, label) for the tokens of one text under a context label:

    - seen_before: 1 when the token's id occurred earlier in the text (within the window);
    - since_last: for tokens seen before, the distance to the previous occurrence, bucketed by
      SINCE_LAST_BUCKETS (0: <= 8 tokens back ... 3: further);
    - in_string: 1 when the token lies inside a Python string literal (the text is code; read by
      Python's own tokenizer, up to the first point it cannot read);
    - bracket_depth: how many (, [ or { are open where the token starts (code; a closing
      bracket is at the depth it returns to), capped at MAX_BRACKET_DEPTH."""
    if kind in ("seen_before", "since_last"):
        last: dict[int, int] = {}
        out = []
        for i, t in enumerate(ids):
            if kind == "seen_before":
                out.append((i, int(t in last)))
            elif t in last:
                out.append((i, int(np.searchsorted(SINCE_LAST_BUCKETS, i - last[t]))))
            last[t] = i
        return out
    in_string, depth, readable = _code_char_labels(text)
    out = []
    for i, (start, end) in enumerate(offsets):
        if end > readable or end <= start:
            continue
        if kind == "in_string":
            out.append((i, int(in_string[end - 1])))
        else:
            out.append((i, int(min(depth[start], MAX_BRACKET_DEPTH))))
    return out


def _code_char_labels(text: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Per character of Python source: inside a string literal, the bracket depth before it; and
    how many characters Python's tokenizer could read (a file cut short ends early)."""
    import io
    import tokenize

    line_starts = np.concatenate([[0], np.cumsum([len(x) for x in text.splitlines(True)])])
    at = lambda row_col: int(line_starts[row_col[0] - 1] + row_col[1])  # noqa: E731
    in_string = np.zeros(len(text) + 1, dtype=bool)
    change = np.zeros(len(text) + 2, dtype=np.int64)
    readable = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            start, end = at(tok.start), at(tok.end)
            if tok.type == tokenize.STRING:
                in_string[start:end] = True
            elif tok.type == tokenize.OP and tok.string in "([{":
                change[end] += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                change[start] -= 1
            readable = end
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # labels up to where the tokenizer stopped
    depth = np.maximum(np.cumsum(change)[: len(text) + 1], 0)
    return in_string, depth, readable
