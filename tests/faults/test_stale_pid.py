"""A deployment's server is known by its pid and the process's identity (boot id and start time,
deployments/processes.py): after a reboot, or when the number was reused, a stand-in process holding the
old pid is neither adopted nor signalled; the deployment forgets it and says why."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from deployments import processes
from deployments.models import Deployment
from deployments.supervisor import Supervisor
from tests.support.deployments import demo_deployment
from tests.support.nodes import online_cpu_node

pytestmark = [pytest.mark.django_db, pytest.mark.demo]


@pytest.fixture
def stand_in():
    """An unrelated process in a session of its own (as a server would be), killed afterwards."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield process
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_an_identity_is_the_boot_and_the_start_time(stand_in):
    recorded = processes.identity(stand_in.pid)
    assert recorded.startswith(processes.boot_id() + ":")
    assert processes.is_ours(stand_in.pid, recorded)
    assert not processes.is_ours(stand_in.pid, "another-boot:" + recorded.split(":")[1])
    assert not processes.is_ours(stand_in.pid, f"{processes.boot_id()}:{int(recorded.split(':')[1]) + 1}")
    assert processes.is_ours(2**22 + 1, recorded)  # no process there: the rest of its group may live on
    assert processes.is_ours(stand_in.pid, "")  # recorded before identities were kept: trusted as before


@pytest.mark.parametrize("desired", ["running", "stopped"])
@pytest.mark.parametrize("recorded", ["after a reboot", "the pid reused"])
def test_a_process_holding_an_old_pid_is_neither_adopted_nor_signalled(cast, tmp_path, stand_in, desired, recorded):
    node = online_cpu_node(tmp_path)
    deployment = demo_deployment(cast.team, "demo")
    started = processes.identity(stand_in.pid).split(":")[1]
    identity = {
        "after a reboot": f"boot-before-the-reboot:{started}",
        "the pid reused": f"{processes.boot_id()}:{int(started) - 100}",
    }[recorded]
    Deployment.objects.filter(pk=deployment.pk).update(
        status="ready" if desired == "running" else "stopping", desired=desired, pid=stand_in.pid,
        process_identity=identity, launched_node=node, port=1,
    )  # fmt: skip

    Supervisor("cpu-1", None, tmp_path / "runs").reconcile(Deployment.objects.get(pk=deployment.pk), here=node)

    assert processes.alive(stand_in.pid) and stand_in.poll() is None, "the stand-in was signalled"
    after = Deployment.objects.get(pk=deployment.pk)
    assert after.pid != stand_in.pid, "the stand-in was adopted"
    assert f"pid {stand_in.pid} now belongs to another process" in " ".join(e.message for e in after.events.all())
    if desired == "stopped":
        assert after.status == "stopped"
