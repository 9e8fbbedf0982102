"""Inspection: scores with their intervals and paired tests, what a model gets wrong, the report's tables and pure
figure functions, Grad-CAM."""
