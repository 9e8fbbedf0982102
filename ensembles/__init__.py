"""Ensembling: select members, weight them, blend their predictions (reads predictions, never models)."""
