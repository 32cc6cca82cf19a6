"""Where a server runs on its node: a folder per deployment and revision, made fresh and readable only
by the node agent, holding the server's log and its HOME, which is also its working directory. The
launch is the supervisor's own; the server is a stand-in script that says where it runs (vLLM itself
is in test_vllm_e2e.py, which checks the same on a real server)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deployments import services, supervisor
from deployments.models import Deployment
from deployments.supervisor import Supervisor
from tests.support.deployments import demo_deployment, launch_and_wait, stand_in_runtime
from tests.support.nodes import online_cpu_node

pytestmark = pytest.mark.django_db

STAND_IN = '#!/bin/sh\necho "server $$ started in $(pwd) with HOME=$HOME and key ${PLUGBOARD_SERVER_KEY:+set}: $*"\n'


@pytest.fixture
def node_folder(cast, tmp_path, settings) -> Path:
    """The folder the supervisor keeps its servers' runs in; servers are the stand-in."""
    online_cpu_node(tmp_path)
    return stand_in_runtime(tmp_path, settings, STAND_IN)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_server_runs_in_a_folder_of_its_deployment_and_revision_that_only_the_agent_reads(cast, node_folder):
    d = launch_and_wait(node_folder, demo_deployment(cast.team, "demo"))

    folder = node_folder / f"{d.pk}-r1"
    assert d.log_path == str(folder / "server.log")
    text = Path(d.log_path).read_text()
    assert f"started in {folder / 'home'} with HOME={folder / 'home'} and key set:" in text
    assert d.api_key not in text, "the key reaches the server through its environment, not its arguments"
    assert d.api_key not in d.command
    assert (mode(node_folder), mode(folder), mode(folder / "home"), mode(folder / "server.log")) == (
        0o700, 0o700, 0o700, 0o600,
    )  # fmt: skip


def test_an_agent_tightens_a_server_folder_an_older_agent_left_open(tmp_path):
    root = tmp_path / "cache-server-logs"
    root.mkdir(mode=0o755)
    root.chmod(0o755)

    Supervisor("n", None, root)

    assert mode(root) == 0o700


def test_a_new_deployment_under_a_deleted_ones_name_sees_none_of_its_lines(cast, node_folder):
    old = launch_and_wait(node_folder, demo_deployment(cast.team, "demo"))
    Deployment.objects.filter(pk=old.pk).update(desired="stopped", status="stopped", pid=None)
    services.deployment_delete(deployment=Deployment.objects.get(pk=old.pk))

    new = launch_and_wait(node_folder, demo_deployment(cast.team, "demo"))

    assert Path(new.log_path).parent != Path(old.log_path).parent
    new_lines = Path(new.log_path).read_text()
    assert f"server {old.pid} started in {Path(old.log_path).parent}/" in Path(old.log_path).read_text()
    assert f"server {old.pid} " not in new_lines and f"{Path(old.log_path).parent}/" not in new_lines
    assert new_lines.count("==== starting revision") == 1
    assert Path(new.log_path).parent.name == f"{new.pk}-r1"


def test_a_folder_left_under_the_same_id_and_revision_is_never_written_to(cast, node_folder):
    # A database recreated while the node keeps its files gives ids out again.
    deployment = demo_deployment(cast.team, "demo")
    stale = node_folder / f"{deployment.pk}-r1"
    stale.mkdir(parents=True)
    (stale / "server.log").write_text("a line of another deployment's server\n")

    d = launch_and_wait(node_folder, deployment)

    assert d.log_path == str(node_folder / f"{d.pk}-r1.2" / "server.log")
    assert "another deployment" not in Path(d.log_path).read_text()
    assert (stale / "server.log").read_text() == "a line of another deployment's server\n"


def test_a_relaunch_after_a_crash_keeps_the_crash_above_the_new_start_in_one_log(cast, node_folder):
    first = launch_and_wait(node_folder, demo_deployment(cast.team, "demo"))
    with open(first.log_path, "a") as log:
        log.write("ValueError: the stand-in crashed\n")
    Supervisor("cpu-1", None, node_folder).crashed(first, "The server process exited.")

    again = launch_and_wait(node_folder, first)

    assert again.log_path == first.log_path and again.pid != first.pid
    text = Path(again.log_path).read_text()
    assert text.count("==== starting revision 1 at") == 2
    assert text.index("ValueError: the stand-in crashed") < text.rindex("==== starting revision 1 at")
    assert mode(Path(again.log_path)) == 0o600


def test_a_new_revision_gets_a_new_folder_and_the_old_revisions_home_goes(cast, node_folder):
    first = launch_and_wait(node_folder, demo_deployment(cast.team, "demo"))
    (Path(first.log_path).parent / "home" / "cache.bin").write_bytes(b"x" * 1024)
    Deployment.objects.filter(pk=first.pk).update(revision=2, status="restarting", pid=None)

    second = launch_and_wait(node_folder, first)

    assert Path(second.log_path).parent.name == f"{first.pk}-r2"
    assert "==== starting revision 1" not in Path(second.log_path).read_text()
    assert Path(first.log_path).is_file(), "the earlier revision's log stays"
    assert not (Path(first.log_path).parent / "home").exists(), "its caches go"


def test_a_log_is_never_opened_through_a_link_the_server_could_plant(tmp_path):
    elsewhere = tmp_path / "agent-file"
    elsewhere.write_text("")
    (tmp_path / "server.log").symlink_to(elsewhere)

    with pytest.raises(OSError):
        supervisor.log_open(tmp_path / "server.log", fresh=False)
    assert elsewhere.read_text() == ""
