"""Evaluation: the lm-eval adapter (`labkit.eval.adapter`, model name `labkit`), the offline task
suite (`labkit.eval.tasks`), milestone evaluation and the registry (`labkit.eval.runner`),
baselines, statistics and the report."""
