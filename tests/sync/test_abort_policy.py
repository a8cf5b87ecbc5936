"""``rollout.sync_policy=abort`` against a request that reaches the engine just after the abort went out (past
the gate, still choosing its server or in a retry's back-off): the sync aborts again until nothing is in flight,
instead of waiting for that request to finish on the old weights. The engine here keeps only what the policy
acts on (its gate, its running requests and their abort); ``tests/rollout/test_sync_policies.py`` runs the
policies on a real fleet."""

from __future__ import annotations

import threading
import time

import torch

from megatron_hapo.rollout.inflight import RequestGate
from megatron_hapo.sync import WeightSynchronizer


class Engine:
    """Requests that run until aborted; the weight update calls record what they were given."""

    def __init__(self):
        self.request_gate = RequestGate()
        self.running: list[threading.Event] = []
        self.aborts = 0
        self.lock = threading.Lock()

    def generate_late(self, arrive: threading.Event, outcome: dict) -> None:
        with self.request_gate.request():  # past the gate at once; at the engine only when ``arrive`` is set
            arrive.wait()
            aborted = threading.Event()
            with self.lock:
                self.running.append(aborted)
            outcome["aborted"] = aborted.wait(30)  # a generation that ends only by an abort (or 30 s)

    def abort_requests(self) -> None:
        with self.lock:
            self.aborts += 1
            for request in self.running:
                request.set()
            self.running.clear()

    def pause(self):
        pass

    resume = flush_cache = begin_weight_update = end_weight_update = pause

    def set_weight_version(self, version):
        self.version = version


class Transport:
    name = "recorded"

    def __init__(self):
        self.sent = []

    def send(self, bucket):
        self.sent += [name for name, _ in bucket]

    def finish(self):
        pass


def test_a_request_that_arrives_after_the_abort_is_aborted_too():
    engine, transport, outcome, arrive = Engine(), Transport(), {}, threading.Event()
    request = threading.Thread(target=engine.generate_late, args=(arrive, outcome))
    request.start()
    while engine.request_gate.in_flight == 0:
        time.sleep(0.01)
    original = engine.abort_requests

    def first_abort_then_arrive():  # the request reaches the engine right after the first abort
        original()
        arrive.set()

    engine.abort_requests = first_abort_then_arrive
    sync = WeightSynchronizer(engine, transport, policy="abort", timeout_s=10)
    sync.sync([("w", torch.ones(2))], "v1")
    request.join(5)
    assert outcome == {"aborted": True} and engine.aborts >= 2  # aborted by a later abort, not waited for
    assert transport.sent == ["w"] and engine.version == "v1"
