"""``hapo-serve --config FILE [--servers N] [--port P] [--host H] [key=value ...]``: the rollout servers of a run
whose fleet has nodes of its own, started from the run's own config.

On every rollout node::

    HAPO_ROLLOUT_API_KEY=<key> hapo-serve --config recipe.yaml --host <this node's address>

starts this node's servers as a run with ``rollout.launch_servers=true`` would: the same SGLang arguments
(``model.dtype``, ``rollout.quantization``, ``model.override_config``, routing replay, ``rollout.server_args``,
``rollout.mem_fraction``), the HAPO sampler, the key from ``rollout.api_key_env`` (in a 0600 file, never on a
command line), sleep on idle. Server i listens on ``--port + i`` (its internal process group on
``--port + 100 + i``) with GPUs ``i*TP .. i*TP+TP-1`` of this node; ``--servers`` defaults to as many as the
node's GPUs hold (one on a CPU machine). Optionally, on one of them, a router in front of all servers::

    hapo-serve --config recipe.yaml --host <address> --port 30000 --router-for http://a:30001,http://b:30001

The trainer then attaches with ``rollout.server_addresses`` (or ``rollout.router_address``) and checks at
start-up that every server runs as its config asks (``rollout.serving.check_attached_servers``); the router
mode checks the same before it starts. Runs in the foreground until SIGTERM or SIGINT, then stops what it
started (a signal during start-up too); a server that dies is reported with its log file, and the command exits 1
once none is left.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import zlib
from dataclasses import replace
from pathlib import Path

from megatron_hapo.cli import report_errors
from megatron_hapo.config.errors import HapoError

POLL_S = 5.0  # how often the servers' processes are checked


class ServeError(HapoError, RuntimeError):
    """hapo-serve cannot start what it was asked to."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hapo-serve",
        description="Start this node's SGLang rollout servers (or a router) from a run's config, for a fleet on "
        "nodes of its own (docs/rollout.md, 'A fleet on nodes of its own').",
    )
    parser.add_argument(
        "--config", required=True, help="the run's YAML config (the trainer's, with its overrides)"
    )
    parser.add_argument(
        "--servers", type=int, help="servers on this node (default: its GPUs // TP; 1 on CPU)"
    )
    parser.add_argument(
        "--port",
        type=int,
        help="first server's HTTP port (default 30001); the router's with --router-for (30000)",
    )
    parser.add_argument("--host", help="address to listen on (default rollout.bind_host)")
    parser.add_argument(
        "--router-for", help="start sglang-router, not servers, in front of these comma-separated URLs"
    )
    parser.add_argument("--log-dir", default="logs", help="the servers' log files go here (default ./logs)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, as given to the trainer")
    args = parser.parse_intermixed_args(argv)
    if args.router_for is not None:
        args.router_for = [u.strip().rstrip("/") for u in args.router_for.split(",") if u.strip()]
    if problem := _argument_problem(args):  # before the config is read or anything started
        print(f"hapo-serve: {problem}", file=sys.stderr)
        return 2
    return report_errors("hapo-serve", lambda: _serve(args))


def _argument_problem(args: argparse.Namespace) -> str | None:
    if args.router_for == []:  # given, but empty (an unset variable, say): never servers in its place
        return "--router-for lists no server URL: give the rollout servers' comma-separated addresses"
    if args.servers is not None and args.servers < 1:
        return f"--servers must be at least 1, got {args.servers} (leave it out for this node's GPUs // TP)"
    if args.servers is not None and args.router_for is not None:
        return (
            "--servers starts servers, --router-for a router in front of servers started elsewhere: give one"
        )
    if args.port is not None and not 1 <= args.port <= 65535:
        return f"--port must be a TCP port (1-65535), got {args.port}"
    return None


class _StoppedStarting(BaseException):
    """SIGTERM/SIGINT while the fleet starts (a BaseException, as KeyboardInterrupt: the fleet's start-up stops
    what it had launched on its way out)."""


def _serve(args) -> int:
    """Install the stop signals first: a scheduler may stop the job while the servers load (minutes on GPUs), and
    the default action would leave the servers it had launched running, in sessions of their own."""
    stop = threading.Event()
    starting = True

    def on_signal(signum, _frame):
        stop.set()
        if starting:
            raise _StoppedStarting(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        fleet = _start(args)
        starting = False
    except _StoppedStarting as e:
        # what had started is stopped (SGLangFleet's start-up), or stops at exit (its atexit hook)
        print(f"hapo-serve: {e} during start-up: stopped before serving", flush=True)
        return 0
    return _run_until_stopped(fleet, stop)


def _start(args):
    """This node's servers (or the router with --router-for), up and checked; their addresses printed."""
    from megatron_hapo import console
    from megatron_hapo.config import load_config
    from megatron_hapo.rollout.fleet import SGLangFleet
    from megatron_hapo.rollout.serving import check_attached_servers, fleet_config

    cfg = load_config(args.config, args.overrides, check_env=False)  # the trainer's layout, not this node
    r = cfg.rollout
    key = os.environ.get(r.api_key_env)
    if not key:
        raise ServeError(
            f"set {r.api_key_env} (rollout.api_key_env) to the fleet's key, e.g. `openssl rand -hex 32`, here and "
            "for the trainer: the servers refuse calls without it (docs/security.md)"
        )
    host = args.host or r.bind_host
    log_dir = Path(args.log_dir).resolve()
    console.setup_logging(None)  # the fleet's warnings and errors (a server lost) on the console
    # a blockwise-FP8 rollout's serving copy goes to the run directory, where the trainer looks for it
    base = replace(
        fleet_config(cfg, run_dir=cfg.trainer.run_dir, launching=not args.router_for),
        host=host,
        api_key=key,
        log_dir=str(log_dir),
        on_server_failure="continue",
    )
    if args.router_for:
        urls = tuple(args.router_for)
        attached = replace(base, attach_urls=urls)
        check_attached_servers(cfg, attached)
        fleet = SGLangFleet(replace(attached, router_port=args.port or 30000))
        print(f"hapo-serve: router {fleet.router.url} in front of {', '.join(urls)}", flush=True)
        print(f"  train with: rollout.router_address={fleet.router.url}", flush=True)
    else:
        n, gpus = _servers_on_this_node(args.servers, r.tensor_parallel_size)
        fleet = SGLangFleet(
            replace(
                base,
                num_servers=n,
                router=False,
                first_port=args.port or 30001,
                server_gpus=gpus,
                # servers on other nodes have their own seeds: same-seeded servers given the same batch would
                # draw the same samples
                seed=cfg.trainer.seed + zlib.crc32(socket.gethostname().encode()) % 1_000_000,
            )
        )
        urls = [s.url for s in fleet.servers]
        print(f"hapo-serve: {n} server(s) up, logs in {log_dir}", flush=True)
        for url in urls:
            print(f"  {url}", flush=True)
        print(f"  train with: rollout.server_addresses=[{','.join(urls)}] (all rollout nodes')", flush=True)
    return fleet


def _servers_on_this_node(asked: int | None, tp: int) -> tuple[int, tuple[tuple[int, ...], ...] | None]:
    """How many servers, and each one's GPUs (None on a CPU machine)."""
    import torch

    from megatron_hapo.rollout.placement import server_gpus

    if not torch.cuda.is_available():
        return asked or 1, None
    node_gpus = torch.cuda.device_count()
    n = asked or node_gpus // tp
    if n < 1:
        raise ServeError(f"this node has {node_gpus} GPU(s), fewer than one server's TP size ({tp})")
    return n, tuple(tuple(g) for g in server_gpus(n, tp, node_gpus, training_gpus=0))


def _run_until_stopped(fleet, stop: threading.Event) -> int:
    """Serve until ``stop`` (SIGTERM/SIGINT); a dead server is logged with its log file and dropped (from the
    router too), and the fleet raises once none is left (exit 1). Stops what was started either way."""
    try:
        while not stop.wait(POLL_S):
            fleet.check_servers()
    finally:
        fleet.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
