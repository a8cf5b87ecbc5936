"""The CPU demo (``make demo`` = ``python -m megatron_hapo.demo``): its reasoning task (``task``), the
imperfect SFT traces (``traces``), the small policy and its warm-up (``policy``), the run's closing
summary (``summary``) and the entry point (``__main__``)."""
