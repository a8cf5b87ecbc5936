"""A server that dies under concurrent requests is dropped once: every request thread of a ``generate`` calls
``check_servers`` after its failed attempt, and before the lock the second thread's ``list.remove`` raised
ValueError, which failed the step (seen as a flaky tests/trainer/test_multinode.py). Plain HTTP stand-ins
for the servers: only their liveness probes are exercised here."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megatron_hapo.rollout.fleet import FleetConfig, SGLangFleet


class _Alive(BaseHTTPRequestHandler):
    def do_GET(self):  # /health and /model_info: 200
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def _serve() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Alive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_dead_server_is_dropped_once_by_concurrent_checks():
    alive, dying = _serve(), _serve()
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in (alive, dying)]
    fleet = SGLangFleet(FleetConfig(attach_urls=tuple(urls), router=False, progress=False))
    try:
        dying.shutdown()
        dying.server_close()
        start = threading.Barrier(8)

        def check():
            start.wait()
            return fleet.check_servers()

        with ThreadPoolExecutor(8) as pool:
            dropped = list(pool.map(lambda _: check(), range(8)))  # raised ValueError before the lock
        assert sorted(len(d) for d in dropped) == [0] * 7 + [1]
        assert [s.url for s in fleet.servers] == [urls[0]] and fleet.lost_servers == [urls[1]]
    finally:
        fleet.shutdown()
        alive.shutdown()


class _ClosesKeptAliveConnections(_Alive):
    """HTTP/1.1 with keep-alive; once ``closing`` is set, the next request on a connection that served one before
    is read and left unanswered, the connection closed: what a server closing an idle connection as a request
    arrives on it looks like to the client."""

    protocol_version = "HTTP/1.1"
    closing = threading.Event()

    def setup(self):
        super().setup()
        self.served = 0

    def do_GET(self):
        if self.served and self.closing.is_set():
            self.close_connection = True
            return
        self.served += 1
        super().do_GET()


def test_a_connection_closed_under_the_probe_is_not_a_dead_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosesKeptAliveConnections)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    fleet = SGLangFleet(FleetConfig(attach_urls=(url,), router=False, progress=False))
    try:
        _ClosesKeptAliveConnections.closing.set()  # the connection the start-up checks left open is closed next
        assert fleet.check_servers() == [] and [s.url for s in fleet.servers] == [url]
    finally:
        _ClosesKeptAliveConnections.closing.clear()
        fleet.shutdown()
        server.shutdown()
