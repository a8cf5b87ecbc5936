"""Diagnostics that use the trainer and the rollout engine together (the log-prob doctor)."""
