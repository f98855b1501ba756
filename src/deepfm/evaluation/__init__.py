"""Evaluation: the metric registry and the ranking protocol (scoring held-out users)."""
