"""Diagnostics that use the trainer's model and the rollout engine together: ``logprob_check`` compares the
engine's log-probs with Megatron's (its command is ``tools/logprob_doctor.py``, megatron_hapo/cli/logprob_doctor.py)."""
