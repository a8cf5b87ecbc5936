"""A fleet of SGLang HTTP servers behind ``sglang-router`` (launched by us, or attached by address).

Generation goes through the router (load balancing, retries), except requests with ``custom_params``
(HAPO's sampler statistics), which the router drops: those go to a server directly. Weight updates and
control calls go to every server directly, since each holds its own copy of the weights. A server that dies is reported by
URL, pid, exit code and log file; by config the fleet then keeps serving on the others (it is removed
from the router, and the weight-sync group is rebuilt without it: ``sync/transports.py``) or fails.
Every generate request passes the fleet's request gate (``rollout/inflight.py``), which a weight sync holds
(``sync/synchronizer.py``); a request that a sync aborted is resubmitted after it. Launched servers each get
their own GPUs (``server_gpus``: ``rollout/placement.py``).

Security (docs/security.md): launched servers and the router bind to ``host`` (loopback by default), the
router's Prometheus exporter too; launched servers require a per-run API key (SGLang's ``--api-key``, handed
over in a 0600 config file, not on the command line where ``ps`` shows it), which every call of this class
sends. Attached servers take their key from ``api_key``. The servers' and the router's output goes to log
files under ``log_dir``, never to the trainer's console.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import requests
import torch
from tqdm import tqdm

from megatron_hapo.rollout.inflight import RequestGate
from megatron_hapo.rollout.inprocess import base_server_args
from megatron_hapo.rollout.parse import to_samples
from megatron_hapo.rollout.placement import visible_devices
from megatron_hapo.rollout.processes import spawn_server, stop_server
from megatron_hapo.rollout.types import (
    EngineError,
    GenerationParams,
    GroupStreamReport,
    RolloutCancelled,
    RolloutSample,
)

logger = logging.getLogger(__name__)

# over-sampling's stop: how long to wait for the aborted requests before aborting again (generate_groups)
ABORT_REPEAT_S = 1.0


@dataclass(frozen=True)
class FleetConfig:
    model_path: str = ""
    num_servers: int = 2
    attach_urls: tuple[str, ...] = ()  # existing servers; when set nothing is launched
    # an existing sglang-router to attach to; without attach_urls, its workers are the servers
    router_url: str | None = None
    host: str = "127.0.0.1"  # servers bind to loopback unless told otherwise
    tp_size: int = 1  # GPUs per server
    router: bool = True
    router_policy: str = "round_robin"
    startup_timeout_s: float = 600.0
    request_timeout_s: float = 1800.0
    max_retries: int = 2
    on_server_failure: Literal["continue", "fail"] = "continue"
    max_concurrent_requests: int = 64
    hapo_sampler: bool = False  # start servers with the sglang_ext sampler; responses must carry hapo_*
    progress: bool = True  # tqdm over completed prompts
    log_dir: str | None = None
    seed: int = 0
    server_args: dict[str, Any] = field(default_factory=dict)
    # bound on each server's reply to a weight-sync call (a dead peer is found within it)
    sync_timeout_s: float = 300.0
    # launched servers: server k's local GPU indices (rollout/placement.py); None = no GPU assignment (CPU)
    server_gpus: tuple[tuple[int, ...], ...] | None = None
    # bearer key of the servers; None = launched servers get a fresh per-run key, attached ones need none
    api_key: str | None = None
    # launched servers at fixed addresses (hapo-serve): server i on port first_port + i and its internal process
    # group on first_port + 100 + i; None = free ports drawn here (free_ports)
    first_port: int | None = None
    router_port: int | None = None  # the launched router's HTTP port; None = a free one

    def __repr__(self) -> str:  # the key never reaches a log line
        fields = {k: ("***" if k == "api_key" and v else v) for k, v in self.__dict__.items()}
        return "FleetConfig(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


@dataclass
class FleetProcess:
    """A server or router of the fleet: its URL, and the process and log when this fleet launched it."""

    url: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    tmp_dir: Path | None = None  # its TMPDIR (SGLang's socket files), removed when the fleet stops it

    def describe(self) -> str:
        if self.process is None:
            return f"server {self.url}"
        return f"server {self.url} (pid {self.process.pid}, log {self.log_path})"


def _cli_flags(args: dict[str, Any]) -> list[str]:
    """SGLang's command line for ``args`` (ServerArgs fields): a boolean is a flag, present when true; a list gives
    the flag its values one by one (``--cuda-graph-bs-decode 1 2 4``); a mapping is passed as JSON."""
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        elif isinstance(value, Mapping):
            flags += [flag, json.dumps(dict(value))]
        elif value not in (False, None):
            flags += [flag, str(value)]
    return flags


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports below the ephemeral range, for ports that a launched process binds
    only later: the servers' HTTP ports and internal process groups (SGLang's ``--nccl-port``), the router's.
    A port from the ephemeral range (a bind to port 0) can meanwhile become the source port of an outgoing
    connection; and left to itself, each server draws its process-group port at random when it starts, so
    servers started together on one machine can draw the same one (EADDRINUSE, docs/facts.md)."""
    from sglang.srt.utils.network import get_free_port_below_ephemeral  # SGLang's own rule for such ports

    ports: list[int] = []
    for _ in range(64 * count):
        if len(ports) == count:
            break
        port = get_free_port_below_ephemeral()
        if port not in ports:
            ports.append(port)
    if len(ports) < count:
        raise EngineError(
            f"found only {len(ports)} of {count} distinct free ports below the ephemeral range for the SGLang "
            "servers and router: free some ports in 22000-29999, or launch fewer servers on this machine"
        )
    return ports


def server_launch(
    cfg: FleetConfig,
    index: int,
    port: int,
    secret_file: Path | None,
    on_gpu: bool,
    nccl_port: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Command line and extra environment of launched server ``index``: its SGLang arguments, its key file
    (``--config``; never the key itself on a command line, which every local user can read) and, with
    ``cfg.server_gpus``, its own GPUs as ``CUDA_VISIBLE_DEVICES`` (SGLang then numbers them from 0).
    ``nccl_port``: the port of its internal process group (:func:`free_ports`); None = SGLang draws one."""
    args = base_server_args(on_gpu)
    args.update(cfg.server_args)
    args.update(
        model_path=cfg.model_path, host=cfg.host, port=port, tp_size=cfg.tp_size, random_seed=cfg.seed + index
    )
    if nccl_port is not None:
        args["nccl_port"] = nccl_port
    args.setdefault("log_level", "warning")
    if cfg.hapo_sampler:
        args["sampling_backend"] = "hapo"
    cmd = [sys.executable, "-m", "sglang.launch_server", *_cli_flags(args)]
    if secret_file is not None:
        cmd += ["--config", str(secret_file)]
    env = {}
    if cfg.server_gpus is not None:
        gpus = list(cfg.server_gpus[index])
        if len(gpus) != cfg.tp_size:
            raise EngineError(f"server {index} is given GPUs {gpus} but its TP size is {cfg.tp_size}")
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(gpus, os.environ)
        cmd += ["--base-gpu-id", "0"]
    return cmd, env


def _completion_tokens(outputs: list[dict] | None) -> int:
    """Response tokens of one request's outputs (partial ones of an aborted request included)."""
    if not outputs:
        return 0
    return sum(int(o["meta_info"].get("completion_tokens", len(o.get("output_ids") or []))) for o in outputs)


class SGLangFleet:
    """:class:`~megatron_hapo.rollout.types.RolloutEngine` over N SGLang servers and a router."""

    name = "sglang-fleet"

    def __init__(self, config: FleetConfig):
        self.config = config
        self.weight_version = "default"
        self._session = requests.Session()
        self._log_dir = Path(config.log_dir or os.environ.get("TMPDIR", "/tmp")) / f"hapo-fleet-{os.getpid()}"
        self._log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # holds the servers' key file
        launching = not config.attach_urls and not config.router_url
        # "k" first: a key starting with "-" reads as an option to the server's argument parser (exit 2)
        self._api_key = config.api_key or ("k" + secrets.token_urlsafe(32) if launching else None)
        if self._api_key:
            self._session.headers["Authorization"] = f"Bearer {self._api_key}"
        self.servers: list[FleetProcess] = []
        self.lost_servers: list[str] = []  # URLs of servers dropped under on_server_failure=continue
        # the request threads all call check_servers after a failed attempt: a dead server is dropped once
        self._check_lock = threading.Lock()
        self._router: FleetProcess | None = None
        self.request_gate = RequestGate()
        self._launched: list[FleetProcess] = []  # what this fleet started, dropped servers included
        self.cancelled = threading.Event()  # set by cancel(): every generate raises RolloutCancelled
        atexit.register(self.shutdown)  # never leave servers behind when the trainer dies
        try:
            if config.router_url:
                self._router = FleetProcess(config.router_url.rstrip("/"))
                self._wait_healthy(self._router)
            if config.attach_urls:
                self.servers = [FleetProcess(u.rstrip("/")) for u in config.attach_urls]
            elif self._router is not None:
                self.servers = [FleetProcess(u) for u in self._router_workers()]
            else:
                self.servers = [
                    self._launch_server(i, port, group_port)
                    for i, (port, group_port) in enumerate(self._ports())
                ]
            for server in self.servers:
                self._wait_healthy(server)
                self._check_key(server)
            if config.router and self._router is None:
                self._router = self._launch_router()
                self._wait_healthy(self._router, path="/health")
                self._wait_routable()
        except BaseException:
            self.shutdown()
            raise
        logger.info("fleet ready: %s", ", ".join(s.url for s in self.servers))

    @property
    def router(self) -> FleetProcess | None:
        """The router this fleet launched or attached to (None without one)."""
        return self._router

    @property
    def api_key(self) -> str | None:
        """The servers' key (a launched fleet's per-run key): for a process that attaches to them."""
        return self._api_key

    # -- processes ---------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], url: str, env: dict[str, str] | None = None) -> FleetProcess:
        log_path = self._log_dir / f"{name}.log"
        # a TMPDIR of its own, for the socket files SGLang names with tempfile: a short path (a unix socket's
        # is at most 107 bytes), removed when the fleet stops the process
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"hapo-{name}-"))
        process = spawn_server(cmd, log_path, env={**(env or {}), "TMPDIR": str(tmp_dir)})
        self._launched.append(FleetProcess(url, process, log_path, tmp_dir))
        return self._launched[-1]

    def _router_workers(self) -> list[str]:
        """The worker URLs an attached router balances over (weight updates must reach each of them)."""
        reply = self._session.get(self._router.url + "/workers", timeout=30)
        urls = [w["url"].rstrip("/") for w in reply.json().get("workers", []) if w.get("url")]
        if not urls:
            raise EngineError(f"router {self._router.url} lists no workers; set rollout.server_addresses")
        return urls

    def _launch_server(self, index: int, port: int, nccl_port: int) -> FleetProcess:
        secret = (
            self._secret_file(f"server{index}.secret.yaml", {"api-key": self._api_key})
            if self._api_key
            else None
        )
        cmd, env = server_launch(self.config, index, port, secret, torch.cuda.is_available(), nccl_port)
        return self._spawn(f"server{index}", cmd, f"http://{self.config.host}:{port}", env)

    def _ports(self) -> list[tuple[int, int]]:
        """Each launched server's HTTP port and the port of its internal process group."""
        n, first = self.config.num_servers, self.config.first_port
        if first is not None:
            return [(first + i, first + 100 + i) for i in range(n)]
        ports = free_ports(2 * n)
        return [(ports[2 * i], ports[2 * i + 1]) for i in range(n)]

    def _secret_file(self, name: str, values: dict[str, str]) -> Path:
        path = self._log_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}: {v}\n" for k, v in values.items())
        return path

    def _launch_router(self) -> FleetProcess:
        cfg = self.config
        port, metrics_port = (cfg.router_port, *free_ports(1)) if cfg.router_port else free_ports(2)
        cmd = [
            sys.executable, "-m", "sglang_router.launch_router",
            "--host", cfg.host, "--port", str(port), "--policy", cfg.router_policy,
            "--worker-urls", *[s.url for s in self.servers],
            "--request-timeout-secs", str(int(cfg.request_timeout_s)),
            "--retry-max-retries", str(cfg.max_retries),
            "--health-check-interval-secs", "5", "--health-failure-threshold", "1",
            "--prometheus-port", str(metrics_port),  # the default 29000 collides between routers
            "--prometheus-host", cfg.host,  # the router's default is 0.0.0.0
            "--log-level", "warn",
        ]  # fmt: skip
        return self._spawn("router", cmd, f"http://{cfg.host}:{port}")

    def _key_refused(self, server: FleetProcess, code: int) -> EngineError:
        return EngineError(
            f"{server.describe()} refused this run's API key (HTTP {code}): give the servers' key (their "
            "--api-key) in the environment variable that rollout.api_key_env names (docs/security.md)"
        )

    def _check_key(self, server: FleetProcess) -> None:
        """``/health`` answers without a key: ask a guarded route, so a wrong key fails at start-up."""
        code = self._session.get(server.url + "/model_info", timeout=30).status_code
        if code in (401, 403):
            raise self._key_refused(server, code)

    def _wait_healthy(self, server: FleetProcess, path: str = "/health") -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if server.process is not None and server.process.poll() is not None:
                raise EngineError(
                    f"{server.describe()} exited with code {server.process.returncode} during start-up; see its log"
                )
            try:
                if self._session.get(server.url + path, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise EngineError(f"{server.describe()} not healthy after {self.config.startup_timeout_s:.0f} s")

    def _wait_routable(self) -> None:
        """Until the router lists every server as a healthy worker. Its ``/health`` answers before it has
        registered them (~0.5 s on 2 cores), and a request meanwhile fails with HTTP 503 "no available workers":
        the first requests of every launched fleet were retried, each with a warning on the console."""
        want = {s.url for s in self.servers}
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            try:
                workers = (
                    self._session.get(self._router.url + "/workers", timeout=5).json().get("workers", [])
                )
            except (requests.RequestException, ValueError):
                workers = []
            if want <= {w.get("url", "").rstrip("/") for w in workers if w.get("is_healthy", True)}:
                return
            time.sleep(0.1)
        raise EngineError(
            f"{self._router.describe()} did not list the servers {sorted(want)} as healthy workers after "
            f"{self.config.startup_timeout_s:.0f} s; see its log"
        )

    # -- health --------------------------------------------------------------------------------------
    def _dead_servers(self) -> list[FleetProcess]:
        """Servers whose process exited or whose HTTP front end does not answer. The probe is
        ``/model_info`` (answered without the scheduler), not SGLang's ``/health``, which generates a
        token and so fails on a live server that is paused for a weight sync."""
        dead = []
        for s in self.servers:
            if s.process is not None and s.process.poll() is not None:
                dead.append(s)
                continue
            code = self._probe(s.url + "/model_info")
            if code in (401, 403):
                raise self._key_refused(s, code)
            ok = code == 200
            if not ok:
                dead.append(s)
        return dead

    def _probe(self, url: str) -> int | None:
        """The HTTP status of a GET (None: no answer). A failed attempt is retried once on a new connection: the
        server's HTTP front end closes an idle kept-alive connection after 5 s (uvicorn), and a request sent on
        it as it closes fails although the server is up."""
        for _ in range(2):
            try:
                return self._session.get(url, timeout=10).status_code
            except requests.RequestException:
                continue
        return None

    def check_servers(self) -> list[FleetProcess]:
        """Find dead servers; drop them (``continue``) or raise (``fail``); return the ones dropped.
        Raises if none is left. Dropping a server changes ``num_engine_ranks``, which makes the distributed
        weight-sync transport rebuild its group without it before the next broadcast.

        Thread-safe: the threads of one ``generate`` that lost the same server find it once; the others,
        waiting on the lock, then see the list without it (they raced to ``list.remove`` it before)."""
        with self._check_lock:
            return self._drop_dead_servers()

    def _drop_dead_servers(self) -> list[FleetProcess]:
        dead = self._dead_servers()
        for s in dead:
            code = s.process.poll() if s.process is not None else None
            msg = f"{s.describe()} is down" + (f" (exit code {code})" if code is not None else "")
            if self.config.on_server_failure == "fail":
                raise EngineError(
                    msg + "; the run stops (rollout.on_server_failure=fail; set it to continue to keep going "
                    "on the other servers)"
                )
            logger.error(
                "%s; continuing on the remaining %d server(s) (rollout.on_server_failure=continue)",
                msg, len(self.servers) - 1,
            )  # fmt: skip
            self.servers = [x for x in self.servers if x is not s]  # a new list: readers keep a whole one
            self.lost_servers.append(s.url)
            self._remove_from_router(s)
        if not self.servers:
            raise EngineError("every rollout server is down; see the server logs in " + str(self._log_dir))
        return dead

    def recover_from_sync_failure(self, exc: BaseException) -> bool:
        """Called by the weight synchronizer after a failed broadcast (its side of the group is gone):
        True when dead servers were dropped and the sync can go on with the others (``continue``)."""
        logger.warning("weight sync failed (%s); checking the servers", exc)
        return bool(self.check_servers())

    def _remove_from_router(self, server: FleetProcess) -> None:
        if self._router is None:
            return
        try:
            workers = self._session.get(self._router.url + "/workers", timeout=10).json().get("workers", [])
            for w in workers:
                if w.get("url", "").rstrip("/") == server.url:
                    self._session.delete(f"{self._router.url}/workers/{w['id']}", timeout=10)
        except (requests.RequestException, ValueError, KeyError) as exc:
            logger.warning("could not remove %s from the router (%s); its health check will", server.url, exc)

    def health(self) -> bool:
        return bool(self.servers) and not self._dead_servers()

    # -- generation ----------------------------------------------------------------------------------
    def _post(self, url: str, path: str, payload: dict, timeout: float | None = None) -> Any:
        resp = self._session.post(url + path, json=payload, timeout=timeout or self.config.request_timeout_s)
        if resp.status_code != 200:
            raise EngineError(f"{url}{path} returned HTTP {resp.status_code}: {resp.text[:500]}")
        try:
            return resp.json() if resp.content else None
        except ValueError:  # some control routes (flush_cache) answer in plain text
            return resp.text

    def _target(self, prompt: list[int], sampling: dict | list[dict]) -> str:
        """The router, or a server directly: without a router, and for requests with ``custom_params``
        (HAPO's statistics) or a ``sampling_seed``, which sglang-router does not pass on: through it the HAPO
        sampler would silently sample at the base temperature (or unseeded)."""
        first = sampling if isinstance(sampling, dict) else sampling[0]
        if self._router is not None and not {"custom_params", "sampling_seed"} & set(first):
            return self._router.url
        servers = self.servers  # one read: check_servers may replace the list meanwhile
        return servers[hash(tuple(prompt)) % len(servers)].url

    def _generate_one(
        self, prompt: list[int], params: GenerationParams, cancel: threading.Event | None = None
    ) -> list[dict] | None:
        """The ``n`` samples of one prompt (``params.seeds``: this prompt's seed, then one request each).

        It passes the request gate; when a weight sync aborted it (it comes back aborted, or failed, and a
        sync held the gate since it started), it is resubmitted once the sync released the gate. With
        ``cancel`` set (an over-sampling stream has what it needs) it is not sent, nor retried: None."""
        while True:
            if cancel is not None and cancel.is_set():
                return None
            with self.request_gate.request() as epoch:
                if self.cancelled.is_set():
                    raise RolloutCancelled(self.name)
                try:
                    outputs = self._post_generate(prompt, params, epoch, cancel)
                except EngineError:
                    if not self.request_gate.synced_since(epoch):
                        raise
                    outputs = None
            if self.cancelled.is_set():  # aborted by cancel(), or finished as it came: dropped either way
                raise RolloutCancelled(self.name)
            if outputs is None and cancel is not None and cancel.is_set():
                return None
            if outputs is not None and not (_aborted(outputs) and self.request_gate.synced_since(epoch)):
                return outputs
            logger.info("a weight sync aborted a request of %d prompt tokens; resubmitting it", len(prompt))

    def _post_generate(
        self, prompt: list[int], params: GenerationParams, epoch: int, cancel: threading.Event | None
    ) -> list[dict] | None:
        inputs, sampling = params.sglang_requests([prompt])
        payload = {
            "input_ids": inputs[0] if isinstance(sampling, dict) else inputs,
            "sampling_params": sampling,
            "return_logprob": True,
            "return_routed_experts": params.return_routed_experts,
        }
        last_error = None
        for attempt in range(self.config.max_retries + 1):
            target = self._target(prompt, sampling)
            try:
                out = self._post(target, "/generate", payload)
                return out if isinstance(out, list) else [out]
            except (requests.RequestException, EngineError) as exc:
                if cancel is not None and cancel.is_set():
                    return None  # aborted by generate_groups (SGLang may answer an aborted request with an error)
                if self.cancelled.is_set():  # aborted by cancel(): not retried
                    raise RolloutCancelled(self.name) from exc
                if self.request_gate.synced_since(epoch):  # a sync aborted it: resubmitted after the sync
                    raise EngineError(f"generate aborted by a weight sync: {exc}") from exc
                last_error = exc
                logger.warning(
                    "generate attempt %d/%d failed: %s", attempt + 1, self.config.max_retries + 1, exc
                )
                self.check_servers()
                time.sleep(min(2.0**attempt, 10.0))
        raise EngineError(f"generate failed after {self.config.max_retries + 1} attempts: {last_error}")

    def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[RolloutSample]:
        params.check_engine_sampler(self.config.hapo_sampler, "fleet")
        if not prompts:
            return []
        self.check_servers()
        per_prompt = params.per_prompt(len(prompts))
        outputs: list[dict] = []
        bar = tqdm(
            total=len(prompts), desc="rollout", unit="prompt", disable=not self.config.progress, leave=False
        )
        with (
            bar,
            ThreadPoolExecutor(max_workers=min(self.config.max_concurrent_requests, len(prompts))) as pool,
        ):
            for group in pool.map(lambda p, q: self._generate_one(list(p), q), prompts, per_prompt):
                outputs.extend(group)
                bar.update(1)
        return to_samples(
            outputs,
            prompts,
            params.n,
            require_hapo=self.config.hapo_sampler,
            routed_experts=params.return_routed_experts,
        )

    def generate_groups(
        self,
        prompts: list[list[int]],
        params: GenerationParams,
        accept: Callable[[int, list[RolloutSample]], bool],
    ) -> GroupStreamReport:
        """Over-sampling (``algorithm.dynamic_sampling.over_sample``): every prompt's group is submitted at
        once; ``accept(i, samples)`` sees each group as it completes (in this thread, in completion order)
        and returns True when it has all it needs. Then no further request is sent and the ones in flight
        are aborted through SGLang's ``/abort_request`` (``abort_all`` on every server: while a rollout
        runs it is the servers' only client). Aborted groups are never handed to ``accept``; their partial
        responses are only counted (``GroupStreamReport``)."""
        report = GroupStreamReport()
        if not prompts:
            return report
        per_prompt = params.per_prompt(len(prompts))
        for q in per_prompt:  # what each request will carry
            q.check_engine_sampler(self.config.hapo_sampler, "fleet")
        self.check_servers()
        cancel = threading.Event()
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrent_requests, len(prompts))) as pool:
            futures = {
                pool.submit(self._generate_one, list(p), q, cancel): i
                for i, (p, q) in enumerate(zip(prompts, per_prompt, strict=True))
            }
            pending = set(futures)
            try:
                while pending and not cancel.is_set():
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in sorted(done, key=futures.__getitem__):  # ties in prompt order
                        outputs = fut.result()
                        report.generated_tokens += _completion_tokens(outputs)
                        if cancel.is_set():  # finished after the batch was full: generated, not used
                            report.discarded += 1
                            continue
                        i = futures[fut]
                        samples = to_samples(
                            outputs,
                            [prompts[i]],
                            params.n,
                            require_hapo=self.config.hapo_sampler,
                            routed_experts=per_prompt[i].return_routed_experts,  # what its request asked for
                        )
                        for s in samples:
                            s.prompt_index = i
                        report.completed += 1
                        if accept(i, samples):
                            cancel.set()
            except BaseException:  # a failed request or scorer: stop the others before raising
                cancel.set()
                for fut in pending:
                    fut.cancel()
                self._all("/abort_request", {"abort_all": True})
                raise
            if pending:
                for fut in pending:
                    fut.cancel()  # not started yet: never sent
                # abort_all reaches the requests the servers hold: one still on its way when it came would run
                # to its end. Abort again until every request sent has come back.
                running = {fut for fut in pending if not fut.cancelled()}
                while running:
                    self._all("/abort_request", {"abort_all": True})
                    _, running = wait(running, timeout=ABORT_REPEAT_S)
                for fut in pending:
                    if fut.cancelled():
                        report.never_sent.append(futures[fut])
                        continue
                    outputs = fut.result()
                    if outputs is None:
                        report.aborted += 1
                        continue
                    report.generated_tokens += _completion_tokens(outputs)
                    finished = all(
                        (o["meta_info"].get("finish_reason") or {}).get("type") != "abort" for o in outputs
                    )
                    report.discarded += finished
                    report.aborted += not finished
        return report

    # -- control: every server -------------------------------------------------------------------------
    def _all(self, path: str, payload: dict | None = None, timeout: float | None = None) -> dict[str, Any]:
        """``path`` on every server; the replies by server URL. A server that fails it is checked: if it is
        down, ``continue`` drops it (the call stands on the others) and ``fail`` raises; a live server's
        failure always raises."""
        errors, replies = {}, {}
        for s in self.servers:
            try:
                reply = self._post(s.url, path, payload or {}, timeout=timeout)
            except (requests.RequestException, EngineError) as exc:
                errors[s.url] = f"{s.describe()}: {exc}"
                continue
            if isinstance(reply, dict) and reply.get("success") is False:
                errors[s.url] = f"{s.describe()}: {reply.get('message')}"
            else:
                replies[s.url] = reply
        if errors:
            self.check_servers()
            alive = {s.url for s in self.servers}
            errors = {url: e for url, e in errors.items() if url in alive}
        if errors:
            raise EngineError(f"{path} failed on " + "; ".join(errors.values()))
        return replies

    # -- requests in flight (a weight sync: sync/synchronizer.py) -------------------------------------
    def cancel(self) -> None:
        """Abort every request of ours and resubmit none: ``abort_all`` on every server, again every 0.5 s while
        any is in flight (one sent just as the first abort went out), for at most a minute."""
        self.cancelled.set()
        deadline = time.monotonic() + 60.0
        while True:
            self.abort_requests()
            if not self.request_gate.in_flight or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def abort_requests(self) -> None:
        """SGLang's abort of every request on every server; the gate resubmits them after the sync."""
        self._all("/abort_request", {"abort_all": True})

    def pause(self) -> None:
        self._all("/pause_generation", {"mode": "retract"})

    def resume(self) -> None:
        self._all("/continue_generation", {"torch_empty_cache": torch.cuda.is_available()})

    def flush_cache(self) -> None:
        self._all("/flush_cache")

    def begin_weight_update(self) -> None:
        self._all("/begin_weight_update", {"selector": "all"})

    def end_weight_update(self) -> None:
        self._all("/end_weight_update")

    def update_weights_from_tensor(self, named_tensors) -> None:
        raise EngineError(
            "update_weights_from_tensor needs a colocated engine; use the disk or distributed transport with a fleet"
        )

    def update_weights_from_disk(self, hf_dir: str) -> None:
        self._all("/update_weights_from_disk", {"model_path": str(hf_dir), "keep_pause": True})

    @property
    def num_engine_ranks(self) -> int:
        return self.config.tp_size * len(self.servers)

    def init_weights_update_group(
        self, master_address, master_port, rank_offset, world_size, group_name, backend
    ):
        # every server blocks until all ranks joined: call them concurrently
        def join(k_server):
            k, server = k_server
            payload = dict(
                master_address=master_address, master_port=master_port, world_size=world_size,
                rank_offset=rank_offset + k * self.config.tp_size, group_name=group_name, backend=backend,
            )  # fmt: skip
            reply = self._post(
                server.url, "/init_weights_update_group", payload, timeout=self.config.sync_timeout_s
            )
            if isinstance(reply, dict) and reply.get("success") is False:
                raise EngineError(
                    f"{server.describe()}: init_weights_update_group failed: {reply.get('message')}"
                )

        with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
            list(pool.map(join, enumerate(self.servers)))

    def update_weights_from_distributed(self, names, dtypes, shapes, group_name) -> None:
        payload = {
            "names": names,
            "dtypes": dtypes,
            "shapes": shapes,
            "group_name": group_name,
            "flush_cache": False,
        }
        with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
            list(
                pool.map(
                    lambda s: self._post(
                        s.url, "/update_weights_from_distributed", payload, timeout=self.config.sync_timeout_s
                    ),
                    self.servers,
                )
            )

    def destroy_weights_update_group(self, group_name) -> None:
        self._all(
            "/destroy_weights_update_group", {"group_name": group_name}, timeout=self.config.sync_timeout_s
        )

    def set_weight_version(self, version: str) -> None:
        self._all("/update_weight_version", {"new_version": str(version), "abort_all_requests": False})
        self.weight_version = str(version)

    def server_settings(self) -> list[dict[str, Any]]:
        settings = []
        for s in self.servers:
            resp = self._session.get(s.url + "/server_info", timeout=60)
            if resp.status_code != 200:
                raise EngineError(
                    f"{s.describe()}: /server_info returned HTTP {resp.status_code}: {resp.text[:300]}"
                )
            settings.append(resp.json())
        return settings

    def get_weight(self, hf_name: str, truncate_size: int = 10**9) -> torch.Tensor:
        """``hf_name`` read back from every live server; they must hold the same values (a server that
        missed a weight sync differs), and the first one's copy is returned."""
        replies = self._all("/get_weights_by_name", {"name": hf_name, "truncate_size": truncate_size})
        copies = [(s, torch.as_tensor(replies[s.url])) for s in self.servers if s.url in replies]
        (first, reference), *others = copies
        for s, copy in others:
            if not torch.equal(copy, reference):  # False on different shapes too
                raise EngineError(
                    f"{s.describe()} holds a different {hf_name!r} from {first.describe()}: a weight sync "
                    "did not reach every server"
                )
        return reference

    def shutdown(self) -> None:
        """Stop the servers and the router this fleet launched, dropped servers included (close the weight
        synchronizer first), and remove the files they leave behind (``processes.stop_server``)."""
        launched, self._launched = self._launched, []
        removed = sum(stop_server(p.process, p.tmp_dir) for p in launched)
        if launched:
            logger.info("fleet stopped: %d processes, %d leftover files removed", len(launched), removed)
        self._router = None


def _aborted(outputs: list[dict]) -> bool:
    return any(
        ((o.get("meta_info") or {}).get("finish_reason") or {}).get("type") == "abort" for o in outputs
    )
