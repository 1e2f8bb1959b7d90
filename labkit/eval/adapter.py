"""lm-eval's model interface for labkit checkpoints: `--model labkit --model_args checkpoint=DIR`.

lm-eval (0.4.13) discovers models only from its own table or from a module already imported: it
reads no plugin entry points at start-up, so its own `lm_eval` command does not know `labkit`.
`labkit lm-eval ARGS` registers the model, checks labkit's arguments (one line for a bad one),
then runs lm-eval's command line with ARGS unchanged:

    labkit lm-eval --model labkit --model_args checkpoint=runs/x/checkpoints/tokens_000002621440 \\
        --include_path data/demo/tasks --tasks labkit_suite      # or: labkit eval --run runs/x

Plain `lm_eval --model hf --model_args pretrained=EXPORT` runs the same suite on an exported
checkpoint (`labkit export`) with the same scores. (In Python, `import labkit.eval.adapter`
registers `labkit` for `lm_eval.simple_evaluate`.) Without `--device`, or with a CUDA device on a
machine without CUDA, the model runs on the CPU, as lm-eval's `hf` model does.

`loglikelihood` scores continuations in batches sorted by length (longest first, so a batch
pads little and an out-of-memory error shows up on the first batch); `loglikelihood_rolling`
scores whole documents in disjoint windows of `max_seq_len` as lm-eval's `hf` model does;
`generate_until` decodes greedily with LabModel's KV cache and cuts at the first stop sequence.
Numbers are the ones lm-eval's `hf` model gives on the exported checkpoint (tested).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from labkit.data.tokenizer import EOT, load_tokenizer
from labkit.eval.tasks import check_lm_eval_args, harden_lm_eval
from labkit.model import KVCache
from labkit.run import Milestone
from labkit.run.layout import META

harden_lm_eval()  # sandboxed templates, no `!function` from outside lm-eval's own tasks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What --model_args may hold (batch_size, max_batch_size and device are lm-eval's own flags).
MODEL_ARGS = ("checkpoint", "dtype", "tokenizer", "max_gen_toks")
LM_EVAL_FLAGS = ("batch_size", "max_batch_size", "device")


def resolve_device(device: str | None) -> torch.device:
    """The device to evaluate on: CUDA when none is named and CUDA exists, else the CPU; a CUDA
    (or MPS) device on a machine without one falls back to the CPU with a note, as lm-eval's
    `hf` model does (lm-eval's command line passes cuda:0 unless told otherwise)."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device: cpu, cuda, cuda:N or mps") from None
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(chosen.type, True):
        print(
            f"note: device {device} is not available here: evaluating on the CPU", file=sys.stderr
        )
        return torch.device("cpu")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return chosen


def check_model_args(args: dict[str, Any]) -> None:
    """Refuse, in one line each, what `LabkitLM` cannot use: an unknown or doubled argument, a
    missing or non-checkpoint `checkpoint`, an unknown dtype or a batch size that is no number."""
    doubled = sorted(set(args) & set(LM_EVAL_FLAGS))
    if doubled:
        raise ValueError(
            f"{', '.join(doubled)} in --model_args: pass them as lm-eval's own flags "
            f"({' '.join('--' + k for k in doubled)})"
        )
    unknown = sorted(set(args) - set(MODEL_ARGS))
    if unknown:
        raise ValueError(
            f"unknown --model_args {', '.join(unknown)} for --model labkit: allowed "
            f"{', '.join(MODEL_ARGS)}"
        )
    checkpoint = args.get("checkpoint")
    if not checkpoint:
        raise ValueError(
            "--model labkit needs --model_args checkpoint=DIR, a milestone such as "
            "runs/<id>/checkpoints/tokens_000000016384"
        )
    if not (Path(str(checkpoint)) / META).exists():
        raise FileNotFoundError(
            f"checkpoint={checkpoint} is not a labkit checkpoint directory (no {META}); "
            "pass a milestone such as runs/<id>/checkpoints/tokens_000000016384"
        )
    dtype = args.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: allowed values are {', '.join(DTYPES)}")


def _batch_size(value: int | str) -> int:
    if value == "auto" or str(value).startswith("auto:"):
        return 16
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"batch_size={value!r}: a positive integer or 'auto'") from None
    if size < 1:
        raise ValueError(f"batch_size={value!r}: a positive integer or 'auto'")
    return size


def checkpoint_tokenizer(checkpoint: str | Path | Milestone) -> Path:
    """The tokenizer.json a checkpoint carries (or, for older ones, its data set's)."""
    path = Milestone.read(checkpoint).tokenizer_path
    if path is None:
        raise FileNotFoundError(
            f"no tokenizer for {checkpoint}: neither the checkpoint nor its data set has a "
            "tokenizer.json; pass tokenizer=PATH/tokenizer.json or rebuild the data set with "
            "`labkit data build`"
        )
    return path


@register_model("labkit")
class LabkitLM(TemplateLM):
    """A labkit milestone (or any checkpoint directory of a run) as an lm-eval model."""

    def __init__(
        self,
        checkpoint: str | None = None,
        batch_size: int | str = 16,
        device: str | None = None,
        dtype: str = "float32",
        tokenizer: str | None = None,
        max_gen_toks: int = 64,
        max_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        given = {"checkpoint": checkpoint, "dtype": dtype, "tokenizer": tokenizer, **unknown}
        check_model_args({k: v for k, v in given.items() if v is not None})
        path = Path(str(checkpoint))
        self.batch_size = _batch_size(batch_size)
        self._device = resolve_device(device)
        self.milestone = Milestone.read(path)
        self.model = self.milestone.load(self._device)
        self.checkpoint = path
        self.dtype = DTYPES[dtype]
        self.max_length = self.model.cfg.max_seq_len
        self.max_gen_toks = int(max_gen_toks)
        self.tokenizer = load_tokenizer(tokenizer or checkpoint_tokenizer(path))
        self._eot = self.tokenizer.token_to_id(EOT)

    # ------------------------------------------------------------------------ tokenization
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(self.checkpoint)

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **_: Any
    ) -> list[int]:
        """Token ids of `string`, after the model's first token (`bos_token_id`) when it was
        trained with one, unless `add_special_tokens=False` (lm-eval's way to ask for none)."""
        ids = self.tokenizer.encode(string, add_special_tokens=False).ids
        bos = self.model.cfg.bos_token_id
        return ids if bos is None or add_special_tokens is False else [bos, *ids]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    # ------------------------------------------------------------------------- scoring
    def _amp(self):
        amp = self.dtype != torch.float32
        return torch.autocast(self._device.type, dtype=self.dtype, enabled=amp)

    def _assign(self, idx: list[int], hidden: torch.Tensor, conts: list[list[int]], out) -> None:
        """Score continuations from the residual stream rows that predict their tokens (before
        ln_final; [sum of lengths, d_model], in order): the unembedding runs only there, never at
        every position. out[i] = (sum of log p, whether greedy decoding reproduces it)."""
        target = torch.tensor([t for c in conts for t in c])
        with self._amp():
            logits = self.model.unembed(self.model.ln_final(hidden)).float().cpu()
        logp = F.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]
        hits = logits.argmax(-1) == target
        offset = 0
        for i, c in zip(idx, conts, strict=True):
            n = len(c)
            out[i] = (float(logp[offset : offset + n].sum()), bool(hits[offset : offset + n].all()))
            offset += n

    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding reproduces it) for each
        (context tokens, continuation tokens) pair, in the given order. Continuations that share a
        context (the choices of a multiple-choice question) encode it once: the contexts of a
        batch of questions run through the model once, left-padded into one KV cache, then every
        continuation runs on top of its question's rows of it."""
        for _, cont in pairs:
            if not cont:
                raise ValueError("a continuation encodes to no tokens")
        groups: dict[tuple[int, ...], list[int]] = {}
        alone = []
        for i, (ctx, cont) in enumerate(pairs):
            if ctx and len(ctx) + len(cont) <= self.max_length + 1:
                groups.setdefault(tuple(ctx), []).append(i)
            else:
                alone.append(i)  # left-truncated like `hf`, scored as one sequence
        shared = {c: ix for c, ix in groups.items() if len(ix) > 1}
        alone += [ix[0] for c, ix in groups.items() if len(ix) == 1]
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        bar = tqdm(total=len(pairs), desc="loglikelihood", disable=len(pairs) < 64, leave=False)
        self._score_rows(pairs, alone, out, bar)
        for batch in self._shared_batches(shared, pairs):
            self._score_shared(batch, pairs, out)
            bar.update(sum(len(ix) for _, ix in batch))
        bar.close()
        return out  # type: ignore[return-value]

    def _score_rows(self, pairs, idx: list[int], out: list, bar) -> None:
        """Each pair as its own sequence, batched longest first (a batch pads little)."""
        inputs = {i: (pairs[i][0] + pairs[i][1])[-(self.max_length + 1) :][:-1] for i in idx}
        order = sorted(idx, key=lambda i: -len(inputs[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = torch.zeros(len(rows), len(inputs[rows[0]]), dtype=torch.long)
            for r, i in enumerate(rows):
                batch[r, : len(inputs[i])] = torch.tensor(inputs[i])
            with self._amp():
                hidden = self.model(batch.to(self._device), stop_at_layer=self.model.cfg.n_layers)
            conts = [pairs[i][1] for i in rows]
            picks = [hidden[r, len(inputs[i]) - len(c) : len(inputs[i])]
                     for r, (i, c) in enumerate(zip(rows, conts, strict=True))]  # fmt: skip
            self._assign(rows, torch.cat(picks), conts, out)
            bar.update(len(rows))

    def _shared_batches(self, shared: dict[tuple[int, ...], list[int]], pairs) -> list[list]:
        """Questions (context, request indices) in batches of at most `batch_size`
        continuations, longest context first, each batch short enough to fit max_length once
        its contexts are left-padded to the longest of them."""
        batches: list[list] = []
        longest_ctx = longest_cont = 0
        by_cont = {ctx: max(len(pairs[i][1]) for i in idx) for ctx, idx in shared.items()}
        for ctx, idx in sorted(shared.items(), key=lambda kv: (-by_cont[kv[0]], -len(kv[0]))):
            cont = by_cont[ctx]
            rows = sum(len(ix) for _, ix in batches[-1]) if batches else 0
            fits = batches and rows + len(idx) <= self.batch_size
            if fits and max(longest_ctx, len(ctx)) + max(longest_cont, cont) <= self.max_length + 1:
                batches[-1].append((ctx, idx))
                longest_ctx, longest_cont = max(longest_ctx, len(ctx)), max(longest_cont, cont)
            else:
                batches.append([(ctx, idx)])
                longest_ctx, longest_cont = len(ctx), cont
        return batches

    def _score_shared(self, batch: list, pairs, out) -> None:
        """Questions of one batch: their contexts left-padded into one KV cache in one forward
        (padding hidden from attention), then every continuation (all but its last token) on its
        question's row of that cache, in a second forward."""
        model, n_layers = self.model, self.model.cfg.n_layers
        width = max(len(ctx) for ctx, _ in batch)
        conts = [pairs[i][1] for _, idx in batch for i in idx]
        longest = max(len(c) for c in conts)
        contexts = torch.zeros(len(batch), width, dtype=torch.long)
        valid = torch.ones(len(batch), width + longest, dtype=torch.bool)
        for g, (ctx, _) in enumerate(batch):
            contexts[g, width - len(ctx) :] = torch.tensor(ctx)
            valid[g, : width - len(ctx)] = False
        cache = KVCache(model.cfg, len(batch), width + longest)
        cache.mask_keys(valid.to(self._device))
        with self._amp():
            h_ctx = model(contexts.to(self._device), cache=cache, stop_at_layer=n_layers)[:, -1]
        group = torch.tensor([g for g, (_, idx) in enumerate(batch) for _ in idx])
        # a context's last position predicts the first token of each of its continuations
        rows = [h_ctx[group.to(self._device)]]
        if longest > 1:
            body = torch.zeros(len(conts), longest - 1, dtype=torch.long)
            for r, c in enumerate(conts):
                body[r, : len(c) - 1] = torch.tensor(c[:-1])  # right padding: never read
            with self._amp():
                h_body = model(body.to(self._device), cache=_select_rows(cache, group),
                               stop_at_layer=n_layers)  # fmt: skip
            rows.append(h_body)
        picks = [rows[0][r : r + 1] if len(c) == 1 else
                 torch.cat([rows[0][r : r + 1], rows[1][r, : len(c) - 1]])
                 for r, c in enumerate(conts)]  # fmt: skip
        self._assign([i for _, idx in batch for i in idx], torch.cat(picks), conts, out)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_: Any):
        results = self._score([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood: disjoint windows of max_seq_len, each predicted from the
        previous tokens of its window (the first from the end-of-text token)."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((ctx, cont))
                owner.append(i)
        scores = self._score(windows)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, scores, strict=True):
            totals[i] += logp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ----------------------------------------------------------------------- generation
    @torch.inference_mode()
    def _greedy(self, context: list[int], max_new: int, until: list[str]) -> str:
        """Greedy continuation with the KV cache, stopped at end-of-text, at `max_new` tokens or
        as soon as the decoded text holds a stop sequence (cut off there)."""
        cache = KVCache(self.model.cfg, 1, len(context) + max_new)
        amp = self.dtype != torch.float32
        tokens: list[int] = []
        step_input = torch.tensor([context], device=self._device)
        text = ""
        for _ in range(max_new):
            with torch.autocast(self._device.type, dtype=self.dtype, enabled=amp):
                logits = self.model(step_input, cache=cache)[0, -1]
            nxt = int(logits.argmax())
            if nxt == self.eot_token_id:
                break
            tokens.append(nxt)
            text = self.tok_decode(tokens)
            if any(stop and stop in text for stop in until):
                break
            step_input = torch.tensor([[nxt]], device=self._device)
        for stop in until:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop sequence (cut off) or max_gen_toks."""
        out = []
        for req in tqdm(requests, desc="generate", disable=disable_tqdm or len(requests) < 16):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ctx = self.tok_encode(context) or [self.prefix_token_id]
            text = self._greedy(ctx[-(self.max_length - max_new) :], max_new, until)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def _select_rows(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """A copy of a KV cache holding its rows `rows` (repeats allowed: one per continuation)."""
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        index = rows.to(layer.buffers[0].device)
        new.batch_size = len(rows)
        new.buffers = [b.index_select(0, index) for b in layer.buffers]
        new.key_mask = layer.key_mask.index_select(0, index) if layer.key_mask is not None else None
        out.layers.append(new)
    return out


def _flag(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in an lm-eval command line (the last one)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def check_lm_eval_argv(argv: list[str]) -> None:
    """With `--model labkit`: labkit's arguments checked before lm-eval loads any task (one
    ValueError line for a bad one): `--model_args` (key=value,... or JSON) and `--device`."""
    if _flag(argv, "--model") != "labkit":
        return
    from lm_eval.utils import simple_parse_args_string

    raw = _flag(argv, "--model_args") or ""
    args = json.loads(raw) if raw.lstrip().startswith("{") else simple_parse_args_string(raw)
    check_model_args(args)
    if _flag(argv, "--device") is not None:
        resolve_device(_flag(argv, "--device"))
    if _flag(argv, "--batch_size") is not None:
        _batch_size(_flag(argv, "--batch_size"))


def lm_eval_cli(argv: list[str]) -> int:
    """`labkit lm-eval ARGS`: lm-eval's own command line (`lm_eval ARGS`, every flag and
    subcommand) with the `labkit` model registered and its arguments checked first: every task
    directory or file they name (`check_tasks_are_data`: a planted `utils.py`, `!function` or
    template never runs) and labkit's own model arguments. A usage error of lm-eval's parser is
    one line too (a ValueError). Returns lm-eval's exit status."""
    import argparse

    from lm_eval.__main__ import cli_evaluate

    check_lm_eval_args(argv)
    check_lm_eval_argv(argv)
    harden_lm_eval()

    def usage_error(parser: argparse.ArgumentParser, message: str) -> None:
        raise ValueError(f"{message} (see `labkit lm-eval --help`)")

    saved, error = sys.argv, argparse.ArgumentParser.error
    sys.argv = ["lm_eval", *argv]
    argparse.ArgumentParser.error = usage_error
    try:
        cli_evaluate()
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
        argparse.ArgumentParser.error = error
    return 0
