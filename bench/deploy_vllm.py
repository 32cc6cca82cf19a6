"""Measures what the console adds to a vLLM deployment, on the demo model.

Two targets (issue #4):

(a) Deploy to ready through the console, with every artifact already cached
    on the node, against a bare `python -m vllm.entrypoints.openai.api_server`
    with the same arguments becoming healthy, in the same run. Target: the
    console adds under 3 seconds.
(b) Attaching an adapter to a live deployment (from the attach call until the
    adapter is listed in /v1/models and answers a 1-token chat completion)
    against a restart with that adapter added (stop the server, start a bare
    one with the extra --lora-modules entry, until healthy and the adapter
    answers). Target: attaching is at least 20 times faster.

Everything runs on embedded defaults in a fresh temporary folder: SQLite, the
embedded Redis, a real node agent (`manage.py node_agent`) in a process of its
own, and the vLLM CPU runtime in `.venv-vllm`. One vLLM server runs at a time:
it waits while someone else's runs (a test), and a round during which one
appears anyway is reported apart, left out of the medians and run again (up
to --retries extra rounds). The console's side and the bare side alternate from round to round. Prints
every run, the medians, where the console's time goes, and whether each
target is met; stops every process it started and deletes its folder.

    .venv/bin/python bench/deploy_vllm.py [--rounds 2] [--attaches 5] [--retries 2] [--no-warmup] [--keep]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from anywhere

import argparse
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

import requests

from config import keys

ROOT = Path(__file__).resolve().parents[1]
VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
POLL = 0.05  # seconds between polls, on both sides
START_TIMEOUT = 300  # seconds a server may take to start before the run is abandoned
NODE = "bench"
WANTED_ADAPTERS = ("pirate", "json-answer")
ATTACHED = "robot"
SETTINGS = {"dtype": "bfloat16", "max_model_len": 2048, "kv_cache_bytes": 1 << 30, "max_loras": 4}
TARGET_OVERHEAD_S = 3.0
TARGET_RATIO = 20.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Abort(Exception):
    """The benchmark cannot go on; the message says why."""


# --- Processes ---------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader of ours still "exists": reap it, then look again.
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int | None, *, grace: float = 20) -> float:
    """SIGTERM to the process group, SIGKILL after `grace` s; returns once it is gone (seconds taken)."""
    started = time.monotonic()
    if not pgid:
        return 0.0
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return 0.0
    deadline = started + grace
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while group_alive(pgid) and time.monotonic() < deadline + 10:
            time.sleep(0.05)
    return time.monotonic() - started


def vllm_servers(marker: str | None = None, *, foreign: bool = False) -> dict[int, int]:
    """{pid: process group} of the vLLM API servers running on this host: those whose command line holds
    `marker` (every one when None), or with `foreign`, those whose command line does not."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if VLLM_ENTRYPOINT in cmdline and (marker is None or (marker in cmdline) != foreign):
                found[int(entry.name)] = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def wait_for_no_other_server(marker: str, *, timeout: float = 900) -> None:
    """One vLLM server at a time on this host: waits while someone else's runs (a test, say)."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        others = vllm_servers(marker, foreign=True)
        if not others:
            if told:
                log("it ended; going on")
            return
        if not told:
            log(f"another vLLM server runs here (pids {sorted(others)}); waiting for it to end")
            told = True
        if time.monotonic() > deadline:
            raise Abort(f"another vLLM server (pids {sorted(others)}) ran for {timeout:.0f} s; measure later")
        time.sleep(1)


class Watcher(threading.Thread):
    """Looks at every process twice a second and notes what is not this run's: vLLM servers someone else
    started (a test), and the CPU time other processes used. This host has two cores; anything else busy
    during a round (a test suite, an install) slows one side more than the other and spoils the round.

    This run's processes are those in `own_groups` (this script's and the node agent's process groups) and
    the process groups of every process whose command line holds `marker` (this run's folder: its vLLM
    servers, its Redis)."""

    def __init__(self, marker: str, own_groups: set[int]) -> None:
        super().__init__(name="foreign-load-watcher", daemon=True)
        self.marker = marker
        self.own_groups = own_groups
        self.sightings: list[tuple[float, tuple[int, ...]]] = []  # (when, foreign vLLM server pids)
        self.cpu: list[tuple[float, float]] = []  # (when, CPU-s others used since the previous look)
        self.stopping = threading.Event()
        self._ticks: dict[int, int] | None = None  # pid: CPU ticks, every process, at the previous look
        self._marked: set[int] = set()
        self._hz = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                self.look()
            except Exception as exc:  # a measurement aid must not stop the measurement
                log(f"the load watcher failed: {exc}")
                return

    def look(self) -> None:
        procs: dict[int, tuple[int, int, str]] = {}  # pid: (process group, CPU ticks, command line)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError):
                continue
            procs[int(entry.name)] = (int(fields[2]), int(fields[11]) + int(fields[12]), cmdline)
        # A group stays this run's once seen with the marker: a vLLM engine process outlives its API server.
        self._marked |= {group for group, _, cmd in procs.values() if self.marker in cmd}
        mine = set(self.own_groups) | self._marked
        now = time.monotonic()
        others = tuple(sorted(p for p, (g, _, cmd) in procs.items() if VLLM_ENTRYPOINT in cmd and g not in mine))
        if others:
            self.sightings.append((now, others))
        ticks = {pid: t for pid, (_, t, _) in procs.items()}
        if self._ticks is not None:
            # A process not there at the previous look started since: all its time is new.
            used = sum(max(0, t - self._ticks.get(pid, 0)) for pid, t in ticks.items() if procs[pid][0] not in mine)
            self.cpu.append((now, used / self._hz))
        self._ticks = ticks

    def seen_between(self, start: float, end: float) -> set[int]:
        return {pid for at, pids in list(self.sightings) if start <= at <= end for pid in pids}

    def cpu_between(self, start: float, end: float) -> float:
        return sum(used for at, used in list(self.cpu) if start <= at <= end)


LOCK_RETRIES: list[str] = []  # what had to be retried because SQLite said "database is locked"


def retry_locked(what: str, call, *, attempts: int = 50):
    """Runs call(); retries it while SQLite answers "database is locked" at once. That happens when a
    transaction that read first (get_or_create in atomic) needs the write lock the node agent holds: the
    busy timeout does not apply to that upgrade. Each retry is counted and reported."""
    from django.db import OperationalError

    for attempt in range(attempts):
        try:
            return call()
        except OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            LOCK_RETRIES.append(what)
            time.sleep(0.02)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process `pid` (all its threads); this process's when None."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- HTTP -------------------------------------------------------------------------


def healthy(session: requests.Session, base_url: str) -> bool:
    try:
        return session.get(base_url + "/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def listed(session: requests.Session, base_url: str, model: str) -> bool:
    try:
        response = session.get(base_url + "/v1/models", timeout=5)
    except requests.RequestException:
        return False
    return response.status_code == 200 and any(m["id"] == model for m in response.json()["data"])


def answers(session: requests.Session, base_url: str, model: str) -> bool:
    """Whether a 1-token chat completion on `model` returns 200."""
    try:
        response = session.post(
            base_url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0},
            timeout=60,
        )
    except requests.RequestException:
        return False
    return response.status_code == 200


def session_for(api_key: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    return session


# --- The benchmark ------------------------------------------------------------------


class Bench:
    def __init__(self, tmp: Path, *, attaches: int = 5) -> None:
        self.tmp = tmp
        self.attaches = attaches
        self.cache_dir = (tmp / "cache").resolve()
        self.agent: subprocess.Popen | None = None
        self.bare: list[subprocess.Popen] = []
        self.redis_started = False

    # Set-up --------------------------------------------------------------------

    def setup(self) -> None:
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from accounts.services import admin_ensure
        from config import embedded_redis
        from registry.demo import DEMO_BASE, demo_register

        self.redis_started = embedded_redis.ensure_running(settings.REDIS_URL)
        call_command("migrate", verbosity=0)
        from accounts.models import Workspace

        user, _, _ = admin_ensure(username="bench", password=secrets.token_urlsafe(16), workspace_name="Bench")
        workspace = Workspace.objects.get(slug="bench")
        self.workspace = workspace
        artifacts = {a.name: a for a in demo_register(workspace=workspace, store=self.tmp / "demo-store", user=user)}
        not_ready = [a.name for a in artifacts.values() if not a.is_ready]
        if not_ready or DEMO_BASE not in artifacts or not {*WANTED_ADAPTERS, ATTACHED} <= artifacts.keys():
            raise Abort(f"the demo content is incomplete or not ready ({not_ready or sorted(artifacts)})")
        self.base = artifacts[DEMO_BASE]
        self.adapters = {name: artifacts[name] for name in (*WANTED_ADAPTERS, ATTACHED)}
        log(f"registered {', '.join(sorted(artifacts))}")

    def start_agent(self) -> None:
        from cluster.models import Accelerator, Node

        argv = [sys.executable, str(ROOT / "manage.py"), "node_agent", "--name", NODE, "--address", "127.0.0.1",
                "--cache-dir", str(self.cache_dir), "--cache-quota", "20G"]  # fmt: skip
        with open(self.tmp / "agent.log", "ab") as agent_log:
            self.agent = subprocess.Popen(
                argv, cwd=ROOT, env=dict(os.environ), stdout=agent_log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            node = Node.objects.filter(name=NODE).first()
            if node and node.is_online and Accelerator.objects.filter(node=node).exists():
                self.node = node
                break
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise Abort(f"the node agent did not report; its log:\n{tail(self.tmp / 'agent.log')}")
            time.sleep(0.2)
        log(f"node agent {NODE} reports (pid {self.agent.pid})")

    def warm_cache(self) -> None:
        from cluster.models import CachedArtifact
        from cluster.services import artifact_fetch_request

        started = time.monotonic()
        entries = [
            retry_locked("artifact_fetch_request", lambda a=a: artifact_fetch_request(artifact=a, node=self.node))
            for a in (self.base, *self.adapters.values())
        ]
        deadline = started + 300
        while True:
            states = {e.artifact.name: CachedArtifact.objects.get(pk=e.pk).status for e in entries}
            if all(s == CachedArtifact.Status.READY for s in states.values()):
                break
            bad = {
                n: s for n, s in states.items() if s in (CachedArtifact.Status.FAILED, CachedArtifact.Status.CANCELLED)
            }
            if bad or time.monotonic() > deadline:
                raise Abort(f"fetching to the node did not finish: {states}")
            time.sleep(0.2)
        log(f"cached the base and {len(self.adapters)} adapters on {NODE} in {time.monotonic() - started:.1f} s")

    def warm_runtime(self) -> None:
        """Imports vLLM's server module once so the first measured start does not pay for a cold page cache."""
        from django.conf import settings

        started = time.monotonic()
        subprocess.run(
            [str(settings.PLUGBOARD_VLLM_PYTHON), "-c", f"import {VLLM_ENTRYPOINT}"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
        )  # fmt: skip
        log(f"warmed the vLLM runtime (import took {time.monotonic() - started:.1f} s)")

    # Argv ----------------------------------------------------------------------

    def argv_for(self, d, adapters: list[tuple[str, object]], *, port: int, api_key: str):
        """The argv and environment additions supervisor.launch builds for `d` with `adapters`
        [(served name, Artifact)], at `port` with `api_key`: the same cache paths and settings."""

        from cluster.cache import ArtifactCache
        from cluster.models import CachedArtifact
        from deployments import services

        cache = ArtifactCache(self.cache_dir)

        def path(artifact) -> str:
            return str(cache.artifact_path(CachedArtifact.objects.get(node=d.node, artifact=artifact).key))

        return services.server_command(
            name=d.name, device=d.device, indices=d.accelerator_indices, options=d.settings,
            model_path=path(d.base), adapters=[(s, path(a), a.rank or 1) for s, a in adapters],
            host=d.node.address, port=port, api_key=api_key, extra_args=d.extra_args, extra_env=d.env_text,
            allow_trust_remote_code=True,
        )  # fmt: skip

    # The console's side ----------------------------------------------------------

    def console_run(self, index: int) -> dict:
        from config.vault import unseal
        from deployments import services, vllm_args
        from deployments.models import Deployment, DeploymentEvent

        wait_for_no_other_server(str(self.cache_dir))
        name = f"bench-{index}"
        result: dict = {"name": name}
        self.node.refresh_from_db()  # as the API would read it: is_online looks at its last report
        cpu_agent, cpu_bench = cpu_seconds(self.agent.pid), cpu_seconds()
        t0_wall, t0 = time.time(), time.monotonic()
        d = retry_locked("deployment_create", lambda: services.deployment_create(
            workspace=self.workspace, name=name, base=self.base, node=self.node,
            adapters=[(self.adapters[n], "") for n in WANTED_ADAPTERS], settings=dict(SETTINGS),
        ))  # fmt: skip
        result["create_call"] = time.monotonic() - t0
        health_seen = None
        session = None
        deadline = t0 + START_TIMEOUT
        last_read = 0.0
        while True:
            # Status every 0.05 s, except while the server is starting: then /health every 0.05 s, as on the bare
            # side, and the status once a second (it cannot be ready before /health answers; this catches a crash).
            # Reading the database 20 times a second costs this script ~0.8 CPU-s over a start on two cores.
            starting = d.port and health_seen is None
            if not starting or time.monotonic() - last_read >= 1:
                d = Deployment.objects.select_related("node", "base").get(pk=d.pk)
                last_read = time.monotonic()
                if d.status == Deployment.Status.READY:
                    break
                if d.status in (Deployment.Status.FAILED, Deployment.Status.RESTARTING) or time.monotonic() > deadline:
                    raise Abort(
                        f"{name} did not become ready ({d.status}: {d.status_reason}); log:\n{tail(Path(d.log_path))}"
                    )
            if d.port and health_seen is None:
                session = session or session_for(unseal(d.encrypted_api_key)["api_key"])
                if healthy(session, d.base_url):
                    health_seen = time.monotonic()
                    continue  # read the status at once
            time.sleep(POLL)
        ready_seen = time.monotonic()
        result["deploy_to_ready"] = ready_seen - t0
        result["cpu_agent"] = cpu_seconds(self.agent.pid) - cpu_agent
        result["cpu_bench"] = cpu_seconds() - cpu_bench
        api_key = unseal(d.encrypted_api_key)["api_key"]
        session = session or session_for(api_key)
        if health_seen is None:
            health_seen = ready_seen  # became healthy and ready between two polls

        # Where the time went, from the supervisor's own timestamps (same host clock).
        launched = d.started_at.timestamp() - t0_wall
        recorded_ready = d.ready_at.timestamp() - t0_wall
        result["breakdown"] = {
            "create() call": result["create_call"],
            "create -> server launched (supervisor tick)": launched - result["create_call"],
            "launched -> /health 200 (vLLM itself)": (health_seen - t0) - launched,
            "/health 200 -> status ready recorded (next tick)": recorded_ready - (health_seen - t0),
            "ready recorded -> seen by the 0.05 s poll": result["deploy_to_ready"] - recorded_ready,
        }
        result["events"] = [
            (e.created_at.timestamp() - t0_wall, e.status, e.message.splitlines()[0][:70])
            for e in DeploymentEvent.objects.filter(deployment=d).exclude(status="")
        ]

        # The argv the supervisor used: rebuilt, and checked against the (masked) command it recorded.
        loaded = [(a.served_name, a.adapter) for a in d.adapters.select_related("adapter")]
        argv_same_port, _ = self.argv_for(d, loaded, port=d.port, api_key="x")
        result["argv_matches"] = vllm_args.display(argv_same_port) == d.command
        if not result["argv_matches"]:
            log(
                f"WARNING: the rebuilt command differs from the supervisor's:\n  {vllm_args.display(argv_same_port)}\n  {d.command}"
            )
        result["deployment"] = d.pk
        robot_name = f"{name}:{ATTACHED}"

        # Attach to the live server, `attaches` times: the first attach, then detach and attach again.
        # Each waits a random 1-2 s first: the supervisor ticks once a second, and an attach made right after
        # the tick that recorded "ready" would always wait a whole tick (what a person's click would not).
        result["attaches"] = []
        for k in range(self.attaches):
            time.sleep(random.uniform(1.0, 2.0))
            sample = self.attach_once(d, session, robot_name)
            result["attaches"].append(sample)
            if k < self.attaches - 1:
                self.detach(d, session, robot_name, sample.pop("attached"))
            else:
                sample.pop("attached")
        result["attach"] = statistics.median(a["attach"] for a in result["attaches"])
        pid = d.pid
        if Deployment.objects.get(pk=d.pk).pid != pid:
            raise Abort("attaching restarted the server")

        # Stop it, and make sure its processes are gone before anything else starts.
        t_stop = time.monotonic()
        services.deployment_stop(deployment=d)
        while Deployment.objects.get(pk=d.pk).status != Deployment.Status.STOPPED:
            if time.monotonic() > t_stop + 60:
                raise Abort(f"{name} did not stop within 60 s")
            time.sleep(POLL)
        while group_alive(pid) and time.monotonic() < t_stop + 60:
            time.sleep(POLL)
        stop_group(pid)
        result["stop"] = time.monotonic() - t_stop
        return result

    def attach_once(self, d, session, robot_name: str) -> dict:
        """Attaches robot; returns the seconds until it is listed and answers, and their parts."""
        from deployments import services
        from deployments.models import DeploymentEvent

        seen_events = set(DeploymentEvent.objects.filter(deployment=d).values_list("pk", flat=True))
        t_attach_wall, t_attach = time.time(), time.monotonic()
        attached = services.adapter_attach(deployment=d, adapter=self.adapters[ATTACHED])
        deadline = t_attach + 120
        while not listed(session, d.base_url, robot_name):
            if time.monotonic() > deadline:
                raise Abort(f"{robot_name} was not listed within 120 s")
            time.sleep(POLL)
        t_listed = time.monotonic()
        while not answers(session, d.base_url, robot_name):
            if time.monotonic() > deadline:
                raise Abort(f"{robot_name} did not answer within 120 s")
            time.sleep(POLL)
        t_answered = time.monotonic()
        # The supervisor writes this event just after vLLM's load_lora_adapter call returned.
        loaded = (
            DeploymentEvent.objects.filter(deployment=d, message__startswith=f"Loaded {robot_name}")
            .exclude(pk__in=seen_events)
            .order_by("created_at")
            .first()
        )
        return {
            "attached": attached,
            "attach": t_answered - t_attach,
            "loaded_event": loaded.created_at.timestamp() - t_attach_wall if loaded else float("nan"),
            "listed": t_listed - t_attach,
            "first_answer": t_answered - t_listed,
        }

    def detach(self, d, session, robot_name: str, attached) -> None:
        """Detaches robot and waits until the server no longer lists it and the supervisor forgot it."""
        from deployments import services
        from deployments.models import DeploymentAdapter

        services.adapter_detach(attached=attached)
        deadline = time.monotonic() + 60
        while listed(session, d.base_url, robot_name) or DeploymentAdapter.objects.filter(pk=attached.pk).exists():
            if time.monotonic() > deadline:
                raise Abort(f"{robot_name} was not detached within 60 s")
            time.sleep(POLL)

    # The bare side -------------------------------------------------------------

    def start_bare(self, argv: list[str], env_additions: dict, label: str) -> subprocess.Popen:
        with open(self.tmp / f"{label}.log", "ab") as server_log:
            process = subprocess.Popen(
                argv, env={**os.environ, **env_additions}, stdout=server_log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True,
            )  # fmt: skip
        self.bare.append(process)
        return process

    def wait_healthy(self, process: subprocess.Popen, session, base_url: str, label: str, started: float) -> float:
        while not healthy(session, base_url):
            if process.poll() is not None or time.monotonic() > started + START_TIMEOUT:
                raise Abort(
                    f"the bare server ({label}) did not become healthy; log:\n{tail(self.tmp / f'{label}.log')}"
                )
            time.sleep(POLL)
        return time.monotonic()

    def bare_run(self, index: int, deployment_pk: int) -> dict:
        """The bare side with the argv the supervisor used for the deployment `deployment_pk` (its two
        adapters), then the restart with robot added; new ports and a new API key."""
        from deployments.models import Deployment
        from deployments.supervisor import free_port

        d = Deployment.objects.select_related("node", "base").get(pk=deployment_pk)
        key = "pbk_" + secrets.token_urlsafe(24)
        adapters = [(a.served_name, a.adapter) for a in d.adapters.select_related("adapter")]  # by served name
        without_robot = [(s, a) for s, a in adapters if s != ATTACHED]
        with_robot = sorted([*without_robot, (ATTACHED, self.adapters[ATTACHED])], key=lambda pair: pair[0])
        argv, env_additions = self.argv_for(d, without_robot, port=free_port("127.0.0.1"), api_key=key)
        argv2, env2 = self.argv_for(d, with_robot, port=free_port("127.0.0.1"), api_key=key)
        robot_name = f"{d.name}:{ATTACHED}"
        result: dict = {}
        wait_for_no_other_server(str(self.cache_dir))
        session = session_for(key)
        port = argv[argv.index("--port") + 1]
        url = f"http://127.0.0.1:{port}"
        cpu_agent, cpu_bench = cpu_seconds(self.agent.pid), cpu_seconds()
        t0 = time.monotonic()
        process = self.start_bare(argv, env_additions, f"bare-{index}")
        result["to_healthy"] = self.wait_healthy(process, session, url, f"bare-{index}", t0) - t0
        result["cpu_agent"] = cpu_seconds(self.agent.pid) - cpu_agent
        result["cpu_bench"] = cpu_seconds() - cpu_bench

        # Restart with the adapter added: stop this server, start one with robot in --lora-modules.
        url2 = f"http://127.0.0.1:{argv2[argv2.index('--port') + 1]}"
        t1 = time.monotonic()
        stop_group(process.pid)
        t_stopped = time.monotonic()
        process2 = self.start_bare(argv2, env2, f"restart-{index}")
        t_healthy = self.wait_healthy(process2, session, url2, f"restart-{index}", t1)
        deadline = time.monotonic() + 120
        while not answers(session, url2, robot_name):
            if time.monotonic() > deadline:
                raise Abort(f"{robot_name} did not answer on the restarted server")
            time.sleep(POLL)
        t_answered = time.monotonic()
        result["restart"] = t_answered - t1
        result["restart_stop"] = t_stopped - t1
        result["restart_start_to_healthy"] = t_healthy - t_stopped
        result["restart_first_answer"] = t_answered - t_healthy
        stop_group(process2.pid)
        return result

    # Clean-up --------------------------------------------------------------------

    def cleanup(self) -> None:
        # The agent first, so its supervisor cannot restart a server killed below.
        if self.agent is not None and self.agent.poll() is None:
            stop_group(self.agent.pid, grace=15)
        # Every server whose command line points into this run's cache (the console's and the bare ones),
        # and any bare one still starting.
        groups = set(vllm_servers(str(self.cache_dir)).values())
        groups |= {p.pid for p in self.bare if p.poll() is None}
        for pgid in sorted(groups):
            log(f"stopping vLLM process group {pgid}")
            stop_group(pgid)
        left = vllm_servers(str(self.cache_dir))
        if left:
            log(f"WARNING: vLLM processes still running: {left}")
        if self.redis_started:
            from django.conf import settings
            from django.db import connections

            connections.close_all()
            from config import embedded_redis

            embedded_redis.stop(settings.REDIS_URL)


# --- Report -----------------------------------------------------------------------


def report_runs(runs: list[dict]) -> None:
    header = f"{'round':>5} {'order':<14} {'console ready':>13} {'bare healthy':>12} {'overhead':>8} {'attach':>7} {'restart':>7} {'ratio':>6} {'others':>6}"
    print(header)
    for r in runs:
        overhead = r["console"]["deploy_to_ready"] - r["bare"]["to_healthy"]
        ratio = r["bare"]["restart"] / r["console"]["attach"]
        print(
            f"{r['round']:>5} {r['order']:<14} {r['console']['deploy_to_ready']:>13.2f} {r['bare']['to_healthy']:>12.2f} "
            f"{overhead:>8.2f} {r['console']['attach']:>7.2f} {r['bare']['restart']:>7.2f} {ratio:>6.1f} {r.get('foreign_cpu', 0):>6.2f}"
        )


def report(runs: list[dict]) -> bool:
    print()
    print("Runs (seconds; others: cores that other processes on the host used on average during the round):")
    report_runs(runs)
    med = statistics.median
    console = med(r["console"]["deploy_to_ready"] for r in runs)
    bare = med(r["bare"]["to_healthy"] for r in runs)
    overhead = med(r["console"]["deploy_to_ready"] - r["bare"]["to_healthy"] for r in runs)
    attach = med(a["attach"] for r in runs for a in r["console"]["attaches"])
    attach_worst = max(a["attach"] for r in runs for a in r["console"]["attaches"])
    restart = med(r["bare"]["restart"] for r in runs)

    print()
    print("Where the console's deploy time went (seconds, per round):")
    for label in runs[0]["console"]["breakdown"]:
        values = [r["console"]["breakdown"][label] for r in runs]
        print(f"  {label:<52} " + "  ".join(f"{v:6.2f}" for v in values) + f"   median {med(values):.2f}")
    print("CPU seconds used during the start, besides vLLM's (per round; 2 cores, vLLM binds core 0):")
    for label, side, key in (("node agent, console side", "console", "cpu_agent"),
                             ("node agent, bare side (idle agent)", "bare", "cpu_agent"),
                             ("this script, console side (polls DB, /health)", "console", "cpu_bench"),
                             ("this script, bare side (polls /health)", "bare", "cpu_bench")):  # fmt: skip
        values = [r[side][key] for r in runs]
        print(f"  {label:<52} " + "  ".join(f"{v:6.2f}" for v in values) + f"   median {med(values):.2f}")
    samples = [a for r in runs for a in r["console"]["attaches"]]
    print(f"Attach ({len(samples)} samples in order, seconds; each after a random 1-2 s pause):")
    for label, key in (("attach call -> supervisor loaded it (its event)", "loaded_event"),
                       ("attach call -> listed in /v1/models", "listed"),
                       ("listed -> 1-token completion answered", "first_answer"),
                       ("attach total", "attach")):  # fmt: skip
        values = [a[key] for a in samples]
        print(
            f"  {label:<52} "
            + " ".join(f"{v:5.2f}" for v in values)
            + f"   median {med(values):.2f}, max {max(values):.2f}"
        )
    print("Restart with the adapter (seconds, per round):")
    for label, key in (("stop the running server", "restart_stop"),
                       ("start -> /health 200", "restart_start_to_healthy"),
                       ("healthy -> 1-token completion answered", "restart_first_answer")):  # fmt: skip
        values = [r["bare"][key] for r in runs]
        print(f"  {label:<52} " + "  ".join(f"{v:6.2f}" for v in values) + f"   median {med(values):.2f}")
    print(
        "Console's stop (stop call -> status stopped, processes gone): "
        + "  ".join(f"{r['console']['stop']:.2f}" for r in runs)
    )
    print("Status events of the last console run (s after the create call):")
    for at, status, message in runs[-1]["console"]["events"]:
        print(f"  {at:7.2f}  {status or '-':<9} {message}")
    if not all(r["console"]["argv_matches"] for r in runs):
        print("WARNING: a rebuilt bare command differed from the supervisor's (see above).")

    if LOCK_RETRIES:
        print(f"SQLite 'database is locked' retries: {len(LOCK_RETRIES)} ({', '.join(sorted(set(LOCK_RETRIES)))})")

    ratio = restart / attach
    overhead_ok, ratio_ok = overhead < TARGET_OVERHEAD_S, ratio >= TARGET_RATIO
    print()
    print(f"Medians over {len(runs)} round(s):")
    print(f"  deploy to ready through the console   {console:6.2f} s")
    print(f"  bare vLLM server to healthy           {bare:6.2f} s")
    print(
        f"  console overhead                      {overhead:6.2f} s   target < {TARGET_OVERHEAD_S:.0f} s: {'MET' if overhead_ok else 'NOT MET'}"
    )
    print(f"  attach to a live deployment           {attach:6.2f} s   (slowest {attach_worst:.2f} s)")
    print(f"  restart with the adapter added        {restart:6.2f} s")
    print(
        f"  restart / attach                      {ratio:6.1f} x   target >= {TARGET_RATIO:.0f} x: {'MET' if ratio_ok else 'NOT MET'}"
    )
    print(f"  restart / slowest attach              {restart / attach_worst:6.1f} x")
    return overhead_ok and ratio_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="console/bare pairs, alternating which goes first (2)")
    parser.add_argument("--attaches", type=int, default=5, help="attach samples per round, detaching between (5)")
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.1,
        help="a round during which other processes use more cores than this on average is run again (0.1)",
    )
    parser.add_argument("--retries", type=int, default=2, help="extra rounds allowed for spoiled ones (2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database) afterwards")
    parser.add_argument("--no-warmup", action="store_true", help="skip importing vLLM once before measuring")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="plugboard-bench-deploy-"))
    # Before Django is imported: a fresh SQLite file and embedded Redis under tmp, fast heartbeats.
    for name in ("DATABASE_URL", "REDIS_URL", "PLUGBOARD_LOCAL_ROOTS", "PLUGBOARD_NODE_NAME"):
        os.environ.pop(name, None)
    os.environ.update(
        PLUGBOARD_VAR_DIR=str(tmp),
        DJANGO_SETTINGS_MODULE="config.settings",
        PLUGBOARD_NODE_HEARTBEAT_SECONDS="1",
    )
    keys.ensure_files(tmp)  # the console's keys, as `make run` writes them
    store = ROOT / "var" / "demo-store"
    if not (store / "smollm2-135m-instruct" / ".complete").exists():
        print(f"The demo content is not built in {store}; run `make demo` first.", file=sys.stderr)
        return 2
    (tmp / "demo-store").symlink_to(store)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    bench = Bench(tmp, attaches=args.attaches)
    watcher = Watcher(str(tmp), {os.getpgrp()})
    runs: list[dict] = []  # clean rounds
    spoiled: list[dict] = []  # rounds disturbed by someone else's vLLM server or other load
    try:
        bench.setup()
        bench.start_agent()
        bench.warm_cache()
        if not args.no_warmup:
            bench.warm_runtime()
        watcher.own_groups.add(bench.agent.pid)  # its own session: pid == process group
        watcher.start()
        attempt, last_deployment = 0, None
        while len(runs) < args.rounds and attempt < args.rounds + args.retries:
            attempt += 1
            # The bare side runs the argv of the latest console deployment: this round's when the
            # console goes first, the previous round's otherwise (same settings and cache paths).
            console_first = last_deployment is None or attempt % 2 == 1
            order = "console, bare" if console_first else "bare, console"
            log(f"round {attempt}: {order}")
            wait_for_no_other_server(str(bench.cache_dir))
            started = time.monotonic()
            if console_first:
                console = bench.console_run(attempt)
                log(f"  console: ready in {console['deploy_to_ready']:.2f} s, attach {console['attach']:.2f} s")
                bare = bench.bare_run(attempt, console["deployment"])
                log(f"  bare: healthy in {bare['to_healthy']:.2f} s, restart with {ATTACHED} {bare['restart']:.2f} s")
            else:
                bare = bench.bare_run(attempt, last_deployment)
                log(f"  bare: healthy in {bare['to_healthy']:.2f} s, restart with {ATTACHED} {bare['restart']:.2f} s")
                console = bench.console_run(attempt)
                log(f"  console: ready in {console['deploy_to_ready']:.2f} s, attach {console['attach']:.2f} s")
            last_deployment = console["deployment"]
            run = {"round": attempt, "order": order, "console": console, "bare": bare}
            ended = time.monotonic()
            others = watcher.seen_between(started, ended)
            run["foreign_cpu"] = watcher.cpu_between(started, ended) / (ended - started)
            if others:
                log(f"  SPOILED: another vLLM server (pids {sorted(others)}) ran during this round; not counted")
                spoiled.append(run)
            elif run["foreign_cpu"] > args.max_foreign_load:
                log(
                    f"  SPOILED: other processes used {run['foreign_cpu']:.2f} of a core on average during this "
                    f"round (limit {args.max_foreign_load}); not counted"
                )
                spoiled.append(run)
            else:
                runs.append(run)
        if spoiled:
            print("\nRounds spoiled by someone else's vLLM server (not in the medians):")
            report_runs(spoiled)
        if not runs:
            raise Abort("no round ran alone on the host; measure again when nothing else runs vLLM")
        ok = report(runs)
        return 0 if ok else 1
    except Abort as exc:
        log(f"ABORTED: {exc}")
        if runs:
            report(runs)
        return 2
    finally:
        log("cleaning up")
        watcher.stopping.set()
        bench.cleanup()
        if args.keep:
            log(f"kept {tmp} (server logs in cache-server-logs/ and *.log)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        log("done")


if __name__ == "__main__":
    sys.exit(main())
