"""Over-sampling's stream-and-abort on a real one-server SGLang fleet on CPU (``SGLangFleet.generate_groups``):
groups reach the caller as they complete, and once it has what it needs the requests still running are
aborted through SGLang's ``/abort_request``, never handed over, and the server serves on afterwards.

One server (~30-60 s to start on 2 cores), once for the module; the last test shuts it down."""

import os
import threading
import time

import pytest

from megatron_hapo.rollout import GenerationParams, RolloutCancelled
from megatron_hapo.rollout.fleet import FleetConfig, SGLangFleet
from tests.rollout.common import PROMPTS, wait_until_in_flight

pytestmark = pytest.mark.slow

LONG = GenerationParams(n=2, max_new_tokens=1500, temperature=1.0, ignore_eos=True)
SHORT = GenerationParams(n=1, max_new_tokens=3, temperature=1.0, ignore_eos=True)
LONGEST = GenerationParams(
    n=4, max_new_tokens=2000, temperature=1.0, ignore_eos=True
)  # the model's 2048 context


@pytest.fixture(scope="module")
def fleet(model_dir, tmp_path_factory):
    f = SGLangFleet(
        FleetConfig(
            model_path=str(model_dir), num_servers=1, router=False, progress=False,
            log_dir=str(tmp_path_factory.mktemp("fleet-logs")),
            server_args={"dtype": "float32", "max_total_tokens": 32768}, request_timeout_s=300,
        )
    )  # fmt: skip
    yield f
    f.shutdown()


def test_groups_stream_in_and_the_rest_is_aborted(fleet):
    short = GenerationParams(n=2, max_new_tokens=4, temperature=1.0, ignore_eos=True)
    # one short prompt's group finishes first: the caller takes it and stops; the long ones are aborted
    seen = []

    def accept(i, samples):
        seen.append((i, samples))
        return True

    prompts = [PROMPTS[0]] + PROMPTS * 2
    per_prompt_params = [short] + [LONG] * (len(prompts) - 1)

    class Mixed:  # one GenerationParams per prompt, as per_prompt() returns them
        def per_prompt(self, count):
            return per_prompt_params

        n = 2

    report = fleet.generate_groups(prompts, Mixed(), accept)
    assert [i for i, _ in seen] == [0]
    assert all(s.finish_reason == "length" and len(s.response_ids) == 4 for s in seen[0][1])
    assert report.completed == 1
    assert report.aborted + len(report.never_sent) == len(prompts) - 1, report
    assert report.aborted >= 1, report  # at least one was running when the abort came
    # SGLang answers an aborted request with its partial response: those tokens are counted too
    assert report.generated_tokens > 4 * 2, report
    # the aborted requests stopped early: far fewer tokens than finishing them would have taken
    assert report.generated_tokens < 4 * 2 + (len(prompts) - 1) * 2 * LONG.max_new_tokens // 2, report
    # the server serves on after the abort, every request to completion
    after = fleet.generate(PROMPTS, GenerationParams(n=2, max_new_tokens=5, temperature=1.0, ignore_eos=True))
    assert len(after) == 2 * len(PROMPTS) and all(len(s.response_ids) == 5 for s in after)


def test_a_caller_that_never_stops_gets_every_group(fleet):
    params = GenerationParams(n=2, max_new_tokens=5, temperature=1.0, ignore_eos=True)
    got = {}
    report = fleet.generate_groups(PROMPTS, params, lambda i, samples: got.setdefault(i, samples) is None)
    assert sorted(got) == list(range(len(PROMPTS)))
    assert report.completed == len(PROMPTS) and report.aborted == 0 and report.never_sent == []
    assert report.generated_tokens == 2 * 5 * len(PROMPTS)
    for i, samples in got.items():
        assert [s.prompt_index for s in samples] == [i, i] and samples[0].prompt_ids == list(PROMPTS[i])


def test_cancel_aborts_the_calls_in_flight_and_refuses_later_ones(fleet):
    """A stop's cancel (trainer/shutdown.py -> RolloutStage.cancel): the running generate call ends at once with
    RolloutCancelled (its requests aborted on the server, none resubmitted), later calls raise at once, and the
    server serves its other clients on. On a client of its own: a cancelled fleet generates no more."""
    client = SGLangFleet(
        FleetConfig(attach_urls=(fleet.servers[0].url,), router=False, api_key=fleet.api_key)
    )
    outcome: dict = {}

    def generate():
        try:
            outcome["samples"] = client.generate(PROMPTS * 2, LONGEST)
        except RolloutCancelled as exc:
            outcome["cancelled"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    wait_until_in_flight(client, count=len(PROMPTS) * 2)  # one request per prompt (SGLang's n)
    time.sleep(1.0)  # generating
    started = time.monotonic()
    client.cancel()  # returns once no request of the client is in flight
    cancel_s = time.monotonic() - started
    thread.join(60)
    assert not thread.is_alive() and "cancelled" in outcome, outcome
    assert client.request_gate.in_flight == 0
    # finishing takes 4 x 4 x 2000 tokens, ~30 s on 2 cores (measured with cancel's abort taken out); the
    # abort takes about a second
    assert cancel_s < 10, cancel_s
    with pytest.raises(RolloutCancelled, match="cancelled by a stop"):
        client.generate(PROMPTS, GenerationParams(n=1, max_new_tokens=2))
    assert [len(s.response_ids) for s in fleet.generate(PROMPTS, SHORT)] == [3, 3]


def test_shutdown_removes_what_the_servers_leave_behind(fleet):
    """SGLang's processes remove none of their files when stopped: the socket files (in the server's own
    TMPDIR here) and the load-snapshot shared memory. The fleet's shutdown removes them. Last in the module: it
    shuts the module's fleet down."""
    import psutil

    server = fleet.servers[0]
    group = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    shared = {m.path for p in group for m in p.memory_maps() if m.path.startswith("/dev/shm/sglang_")}
    sockets = list(server.tmp_dir.iterdir())
    assert len(shared) == 1 and len(sockets) == 5, (shared, sockets)  # what each server used to leave
    fleet.shutdown()
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in group)
    assert not server.tmp_dir.exists() and not any(os.path.exists(p) for p in shared)
