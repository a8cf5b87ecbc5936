"""The CPU demo (``make demo`` = ``python -m megatron_hapo.demo``): its reasoning task (``task``), the
imperfect SFT traces (``traces``), the small policy and its warm-up (``policy``), each task's recipe
(``recipes``), the run's closing summary (``summary``), a policy probe (``probe``) and the entry point
(``__main__``)."""
