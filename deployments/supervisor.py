"""The node side of deployments: every second the node agent reconciles the
model servers it runs with what its deployments say should run. It fetches
artifacts, launches servers in sessions of their own, waits for health,
loads and unloads adapters at runtime, restarts crashed servers with backoff,
stops what should stop, and re-adopts servers a restarted agent finds still
running."""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from cluster import services as cluster_services
from cluster.cache import ArtifactCache
from cluster.models import CachedArtifact, Node
from config.errors import DomainError
from deployments import logs, processes, server_metrics, services, vllm_args, vllm_metrics
from deployments.lifecycle import IllegalTransition
from deployments.models import Deployment, DeploymentAdapter
from deployments.vllm_client import ServerError, VllmClient

log = logging.getLogger(__name__)

MAX_FAILURES = 5  # crashes in a row before a deployment is marked failed
# Crashes count "in a row" until a server has stayed up this long: one that dies every time after its health
# check must end failed, not restart forever.
CRASH_WINDOW = timedelta(minutes=10)
START_TIMEOUT = timedelta(minutes=10)
# What the console keeps of a server's log (Deployment.log_tail, and a failure's reason): its last lines, read
# from its last 16 KiB, so a server that writes one endless line cannot grow a row (the node keeps the rest).
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 16 * 1024
# A failed fetch of an adapter is asked for again after 5 s, then twice as long each time up to 10 minutes:
# a source that is down is not hammered every tick, and one that comes back is used again within minutes.
FETCH_RETRY_FIRST_SECONDS = 5
FETCH_RETRY_MAX_SECONDS = 600
# The variable that carries a launch's token (Deployment.launch_token) in its server's environment.
LAUNCH_ENV = "PLUGBOARD_LAUNCH_TOKEN"
STOP_GRACE_SECONDS = 20
STARTING_STOP_GRACE_SECONDS = 3
S = Deployment.Status
BUSY = (S.PENDING, S.FETCHING, S.STARTING, S.RESTARTING, S.STOPPING)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a server's log (from its last LOG_TAIL_BYTES), or "" when it cannot be read."""
    try:
        return "\n".join(logs.read_tail(path, LOG_TAIL_BYTES).lines[-lines:])
    except OSError:
        return ""


def fetch_retry_seconds(failures: int) -> int:
    """Seconds to wait before asking again for an adapter whose fetch failed `failures` times in a row."""
    return min(FETCH_RETRY_MAX_SECONDS, FETCH_RETRY_FIRST_SECONDS * 2 ** max(0, failures - 1))


# What a model server keeps of the node agent's environment: what finds programs and the GPU's libraries,
# set by whoever runs the node. Never the console's own settings (database URL, secret key) or anyone's
# credentials: the server runs a workspace's model and arguments, and must not read them.
INHERITED_ENV = (
    "PATH",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "TZ",
    "LANG",
)


def server_environment(*, home: Path, additions: dict[str, str]) -> dict[str, str]:
    """The environment a model server starts with, built from scratch: INHERITED_ENV, a HOME of its own
    (vLLM and torch keep their caches there; made if missing, readable only by the agent), and what the
    console sets for it (vllm_args.build_command: devices, threads, the plugin, the key, the user's allowed
    variables)."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = str(home)
    return {**env, **additions}


# In a server's run folder (run_folder): its log, and its HOME and working directory.
LOG_NAME = "server.log"
HOME_NAME = "home"


def run_folder(root: Path, *, deployment_id: int, revision: int, previous_log: str) -> tuple[Path, bool]:
    """Returns (the folder a server of this deployment and revision runs in, whether it was made now).

    A relaunch of the same revision on this node (after a crash, or a stop and start) takes the folder of
    the launch before (`previous_log` is in it): the crash's last lines stay above the new start in one
    log, and they are the same deployment's, with the same arguments. Anything else gets a folder made
    now, readable only by the agent (0o700) and never one that exists already: ids can come back (a
    database restored or recreated while the node keeps its files), and no server may see another's
    lines or caches, so a taken name gets a suffix (`12-r3.2`)."""
    stem = f"{deployment_id}-r{revision}"
    if previous_log:
        folder = Path(previous_log).parent
        if folder.parent == root and (folder.name == stem or folder.name.startswith(stem + ".")) and folder.is_dir():
            return folder, False
    for n in itertools.count(1):
        folder = root / (stem if n == 1 else f"{stem}.{n}")
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return folder, True


def log_open(path: Path, *, fresh: bool) -> BinaryIO:
    """Opens a server's log for appending: made now (0o600, failing if it exists) when `fresh`, else the
    one already there. Never through a symbolic link: the server runs in that folder and could plant one."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (os.O_CREAT | os.O_EXCL if fresh else 0), 0o600)
    except FileNotFoundError:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)  # the log of the launch before is gone
    return os.fdopen(fd, "ab")


def homes_prune(root: Path, *, deployment_id: int, keep: Path) -> None:
    """Removes the HOMEs (vLLM's and torch's caches) of the deployment's earlier revisions on this node, and
    keeps their logs: no server runs there any more, and a new revision starts with a HOME of its own."""
    for folder in root.glob(f"{deployment_id}-r*"):
        if folder != keep and (folder / HOME_NAME).is_dir():
            shutil.rmtree(folder / HOME_NAME, ignore_errors=True)


# The line a Python exception ends with: "ValueError: ...", "torch.OutOfMemoryError: ...".
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def last_error(log_tail: str) -> str:
    """Returns the exception a server's log ends with ("ValueError: ..."), as the cause of a crash, or "".
    A wrapper that points back ("See root cause above") gives way to the one before it, and a pydantic
    ValidationError (how vLLM 0.32 refuses its settings) brings its detail lines along."""
    lines = log_tail.splitlines()
    found = [(i, m) for i, line in enumerate(lines) if (m := _EXCEPTION_LINE.match(line.strip()))]
    for i, match in reversed(found):
        name, message = match.groups()
        if "root cause above" in message:
            continue
        if name == "ValidationError":
            details = [
                line.strip().removeprefix("Value error, ")
                for line in lines[i + 1 : i + 4]
                if line.startswith("  ") and not line.strip().startswith("For further information")
            ]
            message = " ".join([message + ":", *details]) if details else message
        return f"{name}: {message[:500]}"
    return ""


@dataclass(frozen=True)
class Launch:
    """A server about to start: what Supervisor.prepare_launch decided and recorded, and `spawn` does."""

    deployment: Deployment
    argv: list[str]
    env: dict[str, str]
    home: Path
    log_path: Path
    fresh: bool
    port: int
    command: str
    adapters: list[DeploymentAdapter]

    def spawn(self) -> subprocess.Popen:
        """Starts the server in its run folder, writing into its log (a line marks each start)."""
        with log_open(self.log_path, fresh=self.fresh) as log_file:
            revision = self.deployment.revision
            log_file.write(f"\n==== starting revision {revision} at {timezone.now().isoformat()} ====\n".encode())
            log_file.flush()
            # Its own session: the server outlives an agent restart, and a signal to its group stops all its processes.
            return subprocess.Popen(
                self.argv, env=self.env, cwd=self.home, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True,
            )  # fmt: skip


class Supervisor:
    """Reconciles one node's deployments. `tick()` is called every second by the agent."""

    def __init__(self, node_name: str, cache: ArtifactCache, log_dir: Path) -> None:
        self.node_name = node_name
        self.cache = cache
        self.log_dir = log_dir
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_dir.chmod(0o700)  # also when an older agent made it readable to every user of the node
        self._scraped_at: dict[int, float] = {}  # deployment id -> when its server's metrics were last read
        self._clients: dict[int, tuple[tuple, VllmClient]] = {}  # deployment id -> (its server, a client for it)
        # deployment id -> the pid of its server this agent launched or adopted; any other pid found running
        # was started by an agent before this one, and is noted as adopted.
        self._supervised: dict[int, int] = {}

    def tick(self) -> bool:
        """Reconciles every deployment of the node; returns whether one is in the middle of a change."""
        node = Node.objects.filter(name=self.node_name).first()
        if node is None:
            return False
        # Also those that moved away while their server still runs here.
        mine = list(
            Deployment.objects.filter(Q(node=node) | Q(launched_node=node)).select_related(
                "base", "node", "launched_node"
            )
        )
        # What is kept per deployment goes with it.
        for held in (self._clients, self._scraped_at, self._supervised):
            for pk in held.keys() - {d.pk for d in mine}:
                del held[pk]
        for deployment in mine:
            try:
                if deployment.log_path and deployment.launched_node_id == node.pk:
                    self.rotate_log(deployment)
                self.reconcile(deployment, here=node)
            except IllegalTransition as exc:
                log.warning("reconciling %s: %s", deployment.name, exc)  # it changed meanwhile: the next tick sees how
            except Exception:
                log.exception("reconciling %s failed", deployment.name)
        return (
            Deployment.objects.filter(node=node, status__in=BUSY).exists()
            or DeploymentAdapter.objects.filter(deployment__node=node)
            .exclude(state=DeploymentAdapter.State.LOADED)
            .exclude(state=DeploymentAdapter.State.FAILED)
            .exists()
        )

    def rotate_log(self, d: Deployment) -> None:
        """Keeps the server's log on the node under PLUGBOARD_SERVER_LOG_MAX_BYTES (logs.rotate), at a tick's cost
        of one stat while it is smaller."""
        try:
            moved = logs.rotate(
                d.log_path, max_bytes=settings.PLUGBOARD_SERVER_LOG_MAX_BYTES, keep=settings.PLUGBOARD_SERVER_LOG_KEEP
            )
        except OSError as exc:  # a full disk, say: the server goes on writing, and the next tick tries again
            log.warning("rotating the log of %s: %s", d.name, exc)
            return
        if moved is not None:
            log.info("rotated the log of %s (%d bytes)", d.name, moved)

    def reconcile(self, d: Deployment, *, here: Node) -> None:
        if d.launch_token and not d.pid and d.launched_node_id == here.pk:
            d = self.recover_launch(d, here=here)
        if d.pid and d.launched_node_id == here.pk and not processes.is_ours(d.pid, d.process_identity):
            d = services.deployment_forget_process(
                deployment=d,
                reason=f"The server's process is gone: pid {d.pid} now belongs to another process (did the node "
                "restart?). That process is left alone.",
            )
        if d.node_id != here.pk:
            # It moved to another node: stop its server here, then that node starts it.
            if processes.group_alive(d.pid):
                self.terminate(d)
            services.deployment_release(
                deployment=d, node=here, reason=f"Stopped the server on {here.name}; it moves to {d.node.name}."
            )
            return
        if d.launched_node_id not in (None, here.pk):
            # It moved here; its server (pid, port) still belongs to the old node until that one stops it.
            old = d.launched_node
            if old.is_online:
                if d.desired == Deployment.Desired.RUNNING and d.status != S.RESTARTING:
                    services.deployment_mark_restarting(
                        deployment=d, reason=f"Waiting for {old.name} to stop the old server."
                    )
                return
            d = services.deployment_release(
                deployment=d, node=old, reason=f"{old.name} is offline; starting on {here.name} without waiting for it."
            )
        alive = processes.alive(d.pid)
        if d.desired == Deployment.Desired.STOPPED:
            if processes.group_alive(d.pid):
                self.terminate(d)
            if d.status != S.STOPPED or d.pid or d.port:
                services.deployment_mark_stopped(deployment=d)
            return
        if d.status == S.FAILED:
            return  # waits for a person: start it again once the cause is fixed
        entries = self.ensure_fetched(d)
        if entries is None:
            return
        if not alive:
            self.start_or_restart(d, entries)
            return
        if self._supervised.get(d.pk) != d.pid and d.launched_node_id == here.pk:
            # Started by this node's agent before it was restarted (or killed): it goes on serving, as it is.
            self._supervised[d.pk] = d.pid
            services.deployment_note_adopted(
                deployment=d, reason=f"The node agent on {here.name} started again and adopted the running server "
                f"(pid {d.pid}).",
            )  # fmt: skip
        if d.restart_requested or (d.launched_revision and d.launched_revision != d.revision):
            reason = "Restart requested." if d.restart_requested else f"Redeploying revision {d.revision}."
            self.terminate(d)
            services.deployment_mark_restarting(
                deployment=d, reason=reason, pid=None, restart_requested=False, failures=0, next_start_at=None
            )
            return
        client = self.client(d)
        if d.status in (S.STARTING, S.RESTARTING, S.PENDING, S.FETCHING):
            if client.healthy():
                self.sync_adapters(d, client, entries)
                services.deployment_mark_ready(
                    deployment=d, reason="The server answers on /health.", log_tail=tail(d.log_path)
                )
            elif d.started_at and timezone.now() - d.started_at > START_TIMEOUT:
                self.terminate(d)
                self.crashed(d, "It did not become healthy within 10 minutes.")
            return
        if not client.healthy():
            if d.status != S.DEGRADED:
                services.deployment_mark_degraded(deployment=d, reason="/health does not answer.")
            return
        if d.status == S.DEGRADED:
            services.deployment_mark_ready(deployment=d, reason="/health answers again.")
        self.sync_adapters(d, client, entries)
        self.scrape(d, client)

    def recover_launch(self, d: Deployment, *, here: Node) -> Deployment:
        """Settles a launch the agent recorded (Deployment.launch_token) but whose pid it never recorded: it
        died in between, or the deployment moved on between the launch and the record. The server, if it
        runs, carries the token in its environment: it is adopted (its pid and identity recorded) when the
        deployment should still run here, and stopped otherwise, so there is never a second server. Returns
        the deployment as it is now."""
        found = processes.carrying(LAUNCH_ENV, d.launch_token)
        # The server is the leader of its own session and process group; the rest are its engine processes.
        leader = next((pid for pid, group in found if pid == group), None)
        wanted = d.desired == Deployment.Desired.RUNNING and d.status != S.FAILED and d.node_id == here.pk
        identity = processes.identity(leader) if leader else None
        leader = leader if identity else None  # (gone since the scan)
        if wanted and leader and d.launched_revision == d.revision:
            self._supervised[d.pk] = leader
            return services.deployment_mark_started(
                deployment=d, pid=leader, process_identity=identity, port=d.port, command=d.command,
                log_path=d.log_path, node=here, revision=d.launched_revision,
                reason=f"Adopted the server (pid {leader}) on port {d.port} that the node agent launched before it "
                "stopped: its launch had not been recorded.",
            )  # fmt: skip
        for group in sorted({group for _, group in found}):
            self.terminate(Deployment(pid=group))  # never ready as far as the console knows: the short grace
        before = "launched before the node agent stopped"
        if not found:
            reason = "The server the node agent was launching when it stopped is not running."
        elif not wanted:
            reason = f"Stopped the server (pid {found[0][0]}) {before}: it should not run."
        elif leader is None:
            reason = f"Stopped what was left of the server {before} (pid {found[0][0]})."
        else:
            reason = (
                f"Stopped the server (pid {leader}) {before}: it runs revision {d.launched_revision}, not {d.revision}."
            )
        return services.deployment_forget_launch(deployment=d, reason=reason)

    def scrape(self, d: Deployment, client: VllmClient) -> None:
        """Keeps a sample of the server's own figures every SCRAPE_SECONDS, for the deployment page's charts."""
        now = server_metrics.now()
        if now - self._scraped_at.get(d.pk, 0) < server_metrics.SCRAPE_SECONDS:
            return
        self._scraped_at[d.pk] = now
        try:
            text = client.metrics_text()
        except ServerError as exc:
            log.warning("reading the metrics of %s: %s", d.name, exc)
            return
        server_metrics.record(d.pk, vllm_metrics.parse(text, at=now))

    # Artifacts ---------------------------------------------------------------

    def ensure_fetched(self, d: Deployment) -> dict[int, CachedArtifact] | None:
        """Returns {artifact id: ready cache entry} once the base and every adapter whose fetch has not failed
        are cached (leased for this deployment); meanwhile asks for fetches and returns None. A failed fetch
        of the base fails the deployment; one of an adapter is asked for again after a backoff (retry_fetch),
        and the server starts without that adapter meanwhile, loading it once it arrives."""
        attached = list(d.adapters.exclude(state=DeploymentAdapter.State.DETACHING).select_related("adapter"))
        entries, waiting = {}, []
        for artifact, adapter in [(d.base, None), *((a.adapter, a) for a in attached)]:
            cached = CachedArtifact.objects.filter(node=d.node, artifact=artifact).first()
            if cached is not None and cached.status == CachedArtifact.Status.FAILED:
                if adapter is None:
                    services.deployment_mark_failed(
                        deployment=d, reason=f"Fetching {artifact.name} failed: {cached.error}"
                    )
                    return None
                cached = self.retry_fetch(adapter, cached, node=d.node)
                if cached.status == CachedArtifact.Status.FAILED:
                    continue  # not waited for: tried again after its backoff
            if cached is None or cached.status == CachedArtifact.Status.CANCELLED:
                cached = cluster_services.artifact_fetch_request(artifact=artifact, node=d.node)
            if cached.status == CachedArtifact.Status.READY:
                cluster_services.cache_lease(cached=cached, holder=d)
                entries[artifact.pk] = cached
                if adapter is not None and adapter.fetch_failures:
                    services.adapter_fetch_succeeded(attached=adapter)
            else:
                waiting.append(artifact)
        if d.base in waiting:
            if d.status in (S.PENDING, S.FETCHING, S.RESTARTING) and not d.pid:
                services.deployment_mark_fetching(deployment=d, reason=f"Fetching {d.base.name} to {d.node.name}.")
            return None
        if waiting and not d.pid:
            # The first start waits for every adapter on its way; a live server loads late ones as they arrive.
            services.deployment_mark_fetching(deployment=d, reason="Fetching the adapters.")
            return None
        return entries

    def retry_fetch(self, attached: DeploymentAdapter, cached: CachedArtifact, *, node: Node) -> CachedArtifact:
        """For an adapter whose fetch to `node` failed: counts a failure not seen before (each is known by when
        it ended) and says when it is tried again, or asks for the fetch again once that time has come. Returns
        the cache entry as it is now."""
        failed_at = cached.finished_at or cached.requested_at
        if failed_at != attached.fetch_failed_at:
            retry_in = fetch_retry_seconds(attached.fetch_failures + 1)
            services.adapter_fetch_failed(attached=attached, failed_at=failed_at, error=cached.error, retry_in=retry_in)
            return cached
        if timezone.now() < failed_at + timedelta(seconds=fetch_retry_seconds(attached.fetch_failures)):
            return cached
        return cluster_services.artifact_fetch_request(artifact=attached.adapter, node=node)

    # Processes ---------------------------------------------------------------

    def start_or_restart(self, d: Deployment, entries: dict[int, CachedArtifact]) -> None:
        if d.pid or d.status in (S.READY, S.STARTING, S.DEGRADED):
            # It was running and is gone.
            self.crashed(d, "The server process exited.")
            return
        if d.next_start_at and timezone.now() < d.next_start_at:
            return
        self.launch(d, entries)

    def crashed(self, d: Deployment, reason: str) -> None:
        if processes.group_alive(d.pid):
            self.kill(d.pid)  # what is left of it (vLLM's engine) must not hold memory into the restart
        stayed_up = (
            d.ready_at is not None
            and d.status in (S.READY, S.DEGRADED)
            and (timezone.now() - d.ready_at >= CRASH_WINDOW)
        )
        failures = 1 if stayed_up else d.failures + 1
        last_lines = tail(d.log_path)
        cause = last_error(last_lines)
        if cause:
            reason = f"{reason} Cause: {cause.rstrip('.')}."
        if failures >= MAX_FAILURES:
            services.deployment_mark_failed(
                deployment=d, reason=f"{reason} It failed {failures} times in a row; last lines:\n{last_lines[-2000:]}",
                pid=None, port=None, failures=failures, log_tail=last_lines,
            )  # fmt: skip
            return
        backoff = min(60, 2 ** (failures - 1))
        services.deployment_mark_restarting(
            deployment=d, reason=f"{reason} Restarting in {backoff} s (attempt {failures}).",
            pid=None, failures=failures, log_tail=last_lines, next_start_at=timezone.now() + timedelta(seconds=backoff),
        )  # fmt: skip

    def launch(self, d: Deployment, entries: dict[int, CachedArtifact]) -> None:
        """Starts the deployment's server and records it: the launch first (prepare_launch), then the process,
        then its pid, so that an agent dying in between leaves a server the next one finds (recover_launch)."""
        launch = self.prepare_launch(d, entries)
        if launch is None:
            return
        try:
            process = launch.spawn()
        except OSError as exc:  # the runtime's interpreter is missing, say: a crash, with its backoff and limit
            d = services.deployment_forget_launch(deployment=launch.deployment, reason="", noted=False)
            self.crashed(d, f"The server could not be started: {exc}.")
            return
        self._supervised[d.pk] = process.pid
        services.adapter_mark(attached=launch.adapters, state=DeploymentAdapter.State.LOADED)
        services.deployment_mark_started(
            deployment=launch.deployment, pid=process.pid, process_identity=processes.identity(process.pid) or "",
            port=launch.port, command=launch.command, log_path=str(launch.log_path), node=d.node,
        )  # fmt: skip

    def prepare_launch(self, d: Deployment, entries: dict[int, CachedArtifact]) -> Launch | None:
        """Returns what starts the deployment's server (its command, environment and run folder), with the launch
        recorded on the deployment (services.deployment_mark_launching); None when the server may not start,
        which fails the deployment with the reason."""
        api_key = d.api_key
        port = free_port(d.node.address)
        loaded = [
            a
            for a in d.adapters.exclude(state=DeploymentAdapter.State.DETACHING).select_related("adapter")
            if a.adapter_id in entries
        ]
        try:
            # Checked again under the administrator's settings in force now (services.server_command): what was
            # allowed when the deployment was saved may not be any more. The environment is unsealed only here.
            argv, env_additions = services.server_command(
                name=d.name, device=d.device, indices=d.accelerator_indices, options=d.settings,
                model_path=str(self.cache.artifact_path(entries[d.base_id].key)),
                adapters=[(a.served_name, str(self.cache.artifact_path(entries[a.adapter_id].key)), a.adapter.rank or 1) for a in loaded],
                host=d.node.address, port=port, api_key=api_key, extra_args=d.extra_args, extra_env=d.env_text,
                model_files=services.model_files_of(d.base),
            )  # fmt: skip
        except DomainError as exc:
            # It would be refused again at every tick: it waits for a person, with the reason on its timeline.
            services.deployment_mark_failed(
                deployment=d, pid=None, port=None,
                reason=f"The server was not started: {exc.message} Edit the deployment, then start it again.",
            )  # fmt: skip
            return None
        folder, fresh = run_folder(self.log_dir, deployment_id=d.pk, revision=d.revision, previous_log=d.log_path)
        if fresh:
            homes_prune(self.log_dir, deployment_id=d.pk, keep=folder)
        home = folder / HOME_NAME
        token = secrets.token_hex(16)
        env = server_environment(home=home, additions={**env_additions, LAUNCH_ENV: token})
        command = vllm_args.display(argv)
        log_path = folder / LOG_NAME
        d = services.deployment_mark_launching(
            deployment=d, token=token, port=port, command=command, log_path=str(log_path), node=d.node
        )
        return Launch(
            deployment=d, argv=argv, env=env, home=home, log_path=log_path, fresh=fresh, port=port, command=command,
            adapters=loaded,
        )  # fmt: skip

    def terminate(self, d: Deployment) -> None:
        """Stops the server's whole process group and returns once every process of it is gone.
        The group, not the server alone: vLLM's engine process was seen to outlive its
        server by more than a minute after SIGTERM, holding its memory."""
        try:
            os.killpg(d.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        # A ready server gets time to finish the requests it holds. One still
        # starting holds none, and vLLM was seen to sit out SIGTERM while it
        # loads the model, so it gets SIGKILL sooner.
        served = d.ready_at and d.started_at and d.ready_at >= d.started_at
        grace = STOP_GRACE_SECONDS if served else STARTING_STOP_GRACE_SECONDS
        if not self._wait_gone(d.pid, grace):
            self.kill(d.pid)

    def kill(self, pgid: int) -> None:
        """SIGKILL to the group; returns once it is gone, so its port and memory are free for what comes next."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait_gone(pgid, 5)

    @staticmethod
    def _wait_gone(pgid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while processes.group_alive(pgid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def client(self, d: Deployment) -> VllmClient:
        """One client (one pooled HTTP session, the key unsealed once) per server, made anew when the
        deployment's server changes (another port or process)."""
        held = self._clients.get(d.pk)
        if held is None or held[0] != (d.base_url, d.pid):
            held = ((d.base_url, d.pid), VllmClient(d.base_url, d.api_key, timeout=5))
            self._clients[d.pk] = held
        return held[1]

    # Adapters ----------------------------------------------------------------

    def sync_adapters(self, d: Deployment, client: VllmClient, entries: dict[int, CachedArtifact]) -> None:
        """Loads the adapters that should be there and unloads the detached ones, through the live server."""
        try:
            served = {m["id"] for m in client.models() if m.get("parent")}
        except ServerError:
            return
        for attached in d.adapters.select_related("adapter", "deployment"):
            model_id = attached.model_id
            if attached.state == DeploymentAdapter.State.DETACHING:
                try:
                    if model_id in served:
                        client.unload_adapter(model_id)
                except ServerError as exc:
                    log.warning("unloading %s: %s", model_id, exc)
                services.adapter_forget(attached=attached)
                continue
            if model_id in served:
                if attached.state != DeploymentAdapter.State.LOADED:
                    services.adapter_mark(attached=[attached], state=DeploymentAdapter.State.LOADED)
                continue
            cached = entries.get(attached.adapter_id)
            if cached is None:
                if attached.state != DeploymentAdapter.State.FETCHING:
                    services.adapter_mark(attached=[attached], state=DeploymentAdapter.State.FETCHING)
                continue
            if attached.state == DeploymentAdapter.State.FAILED:
                continue
            try:
                client.load_adapter(model_id, str(self.cache.artifact_path(cached.key)))
            except ServerError as exc:
                services.adapter_mark(attached=[attached], state=DeploymentAdapter.State.FAILED, error=str(exc))
                services.event_record(deployment=d, message=f"Loading {model_id} failed: {exc}")
                continue
            services.adapter_mark(attached=[attached], state=DeploymentAdapter.State.LOADED)
            services.event_record(deployment=d, message=f"Loaded {model_id} into the running server.")
