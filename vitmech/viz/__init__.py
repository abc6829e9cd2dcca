"""Plots: results in, matplotlib figures out (headless); never runs a model."""
