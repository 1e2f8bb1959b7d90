"""lm-eval's model interface for labkit checkpoints: `--model labkit --model_args checkpoint=DIR`.

lm-eval has no plugin entry point for models, so its own `lm_eval` command does not know `labkit`.
`labkit lm-eval ARGS` registers the model, then runs lm-eval's command line with ARGS unchanged:

    labkit lm-eval --model labkit --model_args checkpoint=runs/x/checkpoints/tokens_000002621440 \\
        --include_path data/demo/tasks --tasks labkit_suite      # or: labkit eval --run runs/x

(In Python, `import labkit.eval.adapter` registers it for `lm_eval.simple_evaluate`.)

`loglikelihood` scores continuations in batches sorted by length (longest first, so a batch
pads little and an out-of-memory error shows up on the first batch); `loglikelihood_rolling`
scores whole documents in disjoint windows of `max_seq_len` as lm-eval's `hf` model does;
`generate_until` decodes greedily with LabModel's KV cache and cuts at the first stop sequence.
Numbers are the ones lm-eval's `hf` model gives on the exported checkpoint (tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from labkit.data.tokenizer import EOT, load_tokenizer
from labkit.eval.metrics import register_lm_eval_metrics
from labkit.eval.tasks import check_lm_eval_args, harden_lm_eval
from labkit.model import KVCache
from labkit.run import Milestone
from labkit.run.layout import META

register_lm_eval_metrics()  # task YAMLs name labkit's metrics; they never carry code
harden_lm_eval()  # sandboxed templates, no `!function` from outside lm-eval's own tasks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        checkpoint: str,
        batch_size: int | str = 16,
        device: str = "cpu",
        dtype: str = "float32",
        tokenizer: str | None = None,
        max_gen_toks: int = 64,
        **_: Any,
    ) -> None:
        super().__init__()
        path = Path(checkpoint)
        if not (path / META).exists():
            raise FileNotFoundError(
                f"checkpoint={checkpoint} is not a labkit checkpoint directory (no {META}); "
                "pass a milestone such as runs/<id>/checkpoints/tokens_000000016384"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: allowed values are {', '.join(DTYPES)}")
        self.milestone = Milestone.read(path)
        self.model = self.milestone.load(device)
        self.checkpoint = path
        self._device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.batch_size = 16 if batch_size == "auto" else int(batch_size)
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
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    # ------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def _logprobs(self, batch: torch.Tensor) -> torch.Tensor:
        """log-softmax over the vocabulary for tokens [batch, pos] (float32)."""
        amp = self.dtype != torch.float32
        with torch.autocast(self._device.type, dtype=self.dtype, enabled=amp):
            logits = self.model(batch.to(self._device))
        return F.log_softmax(logits.float(), dim=-1)

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding reproduces it) for each
        (context tokens, continuation tokens) pair, in the given order."""
        inputs = []
        for ctx, cont in pairs:
            if not cont:
                raise ValueError("a continuation encodes to no tokens")
            whole = (ctx + cont)[-(self.max_length + 1) :][:-1]  # left-truncated like `hf`
            inputs.append(whole)
        order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i]))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        bar = tqdm(total=len(pairs), desc="loglikelihood", disable=len(pairs) < 64, leave=False)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = len(inputs[idx[0]])
            batch = torch.zeros(len(idx), width, dtype=torch.long)
            for row, i in enumerate(idx):
                batch[row, : len(inputs[i])] = torch.tensor(inputs[i])
            logp = self._logprobs(batch).cpu()
            for row, i in enumerate(idx):
                cont = pairs[i][1]
                end = len(inputs[i])
                scores = logp[row, end - len(cont) : end]
                target = torch.tensor(cont)
                total = float(scores.gather(-1, target[:, None]).sum())
                greedy = bool((scores.argmax(-1) == target).all())
                out[i] = (total, greedy)
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

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
                    token_list=self.tok_encode(text),
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


def lm_eval_cli(argv: list[str]) -> int:
    """`labkit lm-eval ARGS`: lm-eval's own command line (`lm_eval ARGS`, every flag and
    subcommand) with the `labkit` model registered. Returns its exit status. Every task
    directory or file the arguments name is checked first (`check_tasks_are_data`): a planted
    `utils.py`, `!function` or template never runs."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    check_lm_eval_args(argv)
    harden_lm_eval()

    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0
