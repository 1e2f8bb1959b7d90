"""Analyses: pure functions over activations and models (similarity, induction, ...)."""
