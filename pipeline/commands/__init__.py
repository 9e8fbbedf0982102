"""Commands a user runs beside the pipeline (`python -m pipeline.commands.<name>`): predict, compare, seeds, sweep,
doctor; and environment, the set-up's (the Makefile's) helper."""
