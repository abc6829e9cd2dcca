"""Analyses: pure functions of (model, cache or images) returning small typed results."""
