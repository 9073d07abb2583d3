"""Runnable beam-m2v pipelines: ``python -m pipelines.embed`` and ``python -m pipelines.reembed``."""
