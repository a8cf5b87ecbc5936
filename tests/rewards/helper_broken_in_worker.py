"""Imports fine in the test process, fails inside a pool worker (to test worker start-up failures)."""

import multiprocessing

if multiprocessing.parent_process() is not None:
    raise RuntimeError("this module refuses to load in a worker")
