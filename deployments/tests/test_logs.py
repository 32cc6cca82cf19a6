"""The server log viewer: the end of the log read without the rest, the console's own checks
hidden until asked for, searched, downloaded whole with the deployment's key masked, and only
for members of the deployment's workspace. And the log on the node: rotated by size while a
real process writes it, without stopping it, and read across the rotation."""

from __future__ import annotations

import asyncio
import html
import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from config.vault import unseal
from deployments import logs, supervisor
from deployments.models import Deployment
from deployments.views import _in_thread
from tests.support.deployments import demo_deployment, launch_and_wait, stand_in_runtime
from tests.support.nodes import api_as, online_cpu_node

pytestmark = pytest.mark.demo

HEALTH = '(APIServer pid=4242) INFO:     127.0.0.1:45678 - "GET /health HTTP/1.1" 200 OK'
MODELS = '(APIServer pid=4242) INFO:     127.0.0.1:45680 - "GET /v1/models HTTP/1.1" 200 OK'
METRICS = 'INFO:     127.0.0.1:45682 - "GET /metrics HTTP/1.1" 200 OK'
CHAT = '(APIServer pid=4242) INFO:     10.0.0.7:51000 - "POST /v1/chat/completions HTTP/1.1" 200 OK'


def write_log(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


# The pure logic


def test_only_the_end_of_a_long_log_is_read_and_the_line_the_cut_falls_in_is_dropped(tmp_path):
    path = write_log(tmp_path / "s.log", [f"line {i:05d}" for i in range(10_000)])  # 11 bytes a line
    tail = logs.read_tail(path, 100)
    assert tail.cut
    assert tail.lines[-1] == "line 09999"
    assert all(len(line) == 10 for line in tail.lines)  # no partial line
    assert len(tail.lines) == 9


def test_a_cut_that_falls_on_a_line_start_keeps_that_line(tmp_path):
    path = write_log(tmp_path / "s.log", ["aaaa", "bbbb", "cccc"])  # 5 bytes a line
    assert logs.read_tail(path, 10).lines == ["bbbb", "cccc"]
    assert logs.read_tail(path, 100) == logs.Tail(lines=["aaaa", "bbbb", "cccc"], cut=False)


@pytest.mark.parametrize(
    "line", [HEALTH, MODELS, METRICS, 'INFO: 1.2.3.4:5 - "GET /health HTTP/1.1" 503 Service Unavailable']
)
def test_the_consoles_own_checks_are_recognised_in_vllm_access_lines(line):
    assert logs.is_health_check(line)


@pytest.mark.parametrize(
    "line",
    [CHAT, 'INFO: 1.2.3.4:5 - "GET /v1/models/other HTTP/1.1" 404 Not Found', "the word /health in a message"],
)
def test_requests_of_users_and_messages_are_not_checks(line):
    assert not logs.is_health_check(line)


def test_checks_are_hidden_and_counted_unless_asked_for():
    tail = logs.Tail([HEALTH, "Starting vLLM", MODELS, CHAT, METRICS])
    hidden = logs.excerpt(tail)
    assert hidden.lines == ["Starting vLLM", CHAT]
    assert hidden.hidden == 3
    assert hidden.matches is None
    assert logs.excerpt(tail, health_checks=True).lines == tail.lines


def test_a_search_is_case_insensitive_counts_every_match_and_keeps_the_last():
    tail = logs.Tail([f"{'ERROR' if i % 2 else 'info'} {i}" for i in range(10)])
    found = logs.excerpt(tail, search="error", limit=3)
    assert found.matches == 5
    assert found.lines == ["ERROR 5", "ERROR 7", "ERROR 9"]
    assert logs.excerpt(tail, search="nothing like it").lines == []


def test_the_key_is_masked_and_cannot_be_found_by_searching_for_it():
    tail = logs.Tail(["non-default args: {'api_key': ['pbk_secret123']}", "pbk_secret123 again"])
    shown = logs.excerpt(tail, secrets=["pbk_secret123"])
    assert shown.lines == ["non-default args: {'api_key': ['****']}", "**** again"]
    assert logs.excerpt(tail, search="pbk_secret", secrets=["pbk_secret123"]).matches == 0


def test_a_search_looks_further_back_than_the_view(tmp_path):
    path = tmp_path / "s.log"
    filler = "x" * 99 + "\n"
    path.write_text("the needle\n" + filler * (logs.SHOWN_BYTES // len(filler) + 10))
    assert "the needle" not in logs.read(str(path)).lines
    assert logs.read(str(path), search="NEEDLE").lines == ["the needle"]


def test_without_a_readable_file_the_node_s_copy_is_shown(tmp_path):
    shown = logs.read(str(tmp_path / "elsewhere.log"), copy=f"{HEALTH}\nloading\nkey pbk_k", secrets=["pbk_k"])
    assert (shown.source, shown.lines, shown.hidden) == ("copy", ["loading", "key ****"], 1)
    assert logs.read("", copy="").lines == []


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_the_download_masks_a_key_that_straddles_two_chunks(chunk):
    data = b"start pbk_abcdef middle pbk_abcdef" + b"." * 20 + b"pbk_abcdef"
    parts = list(logs.masked_chunks(io.BytesIO(data), size=len(data), secrets=["pbk_abcdef"], chunk=chunk))
    assert b"".join(parts) == b"start **** middle ****" + b"." * 20 + b"****"
    assert max(len(p) for p in parts) <= chunk + len("pbk_abcdef")


def test_the_download_ends_at_the_size_the_log_had_when_it_began(tmp_path):
    path = tmp_path / "s.log"
    path.write_bytes(b"a" * (3 * logs.CHUNK_BYTES))
    chunks = logs.stream(str(path), secrets=[])
    with open(path, "ab") as f:
        f.write(b"written after")
    assert b"".join(chunks) == b"a" * (3 * logs.CHUNK_BYTES)


def test_the_chunks_are_read_off_the_event_loop_under_asgi(tmp_path):
    path = write_log(tmp_path / "s.log", ["one pbk_k", "two"])

    async def collect():
        return [part async for part in _in_thread(logs.stream(path, secrets=["pbk_k"]))]

    assert b"".join(asyncio.run(collect())) == b"one ****\ntwo\n"


# Rotation on the node


def test_a_log_within_its_size_is_left_alone(tmp_path):
    path = write_log(tmp_path / "server.log", ["one", "two"])
    assert logs.rotate(path, max_bytes=8, keep=2) is None
    assert logs.rotate(str(tmp_path / "none.log"), max_bytes=1, keep=2) is None
    assert os.listdir(tmp_path) == ["server.log"]


def test_rotation_keeps_the_newest_files_and_empties_the_log_in_place(tmp_path):
    path = str(tmp_path / "server.log")
    inode = os.stat(write_log(tmp_path / "server.log", [])).st_ino
    for n in range(4):
        with open(path, "a") as f:
            f.write(f"generation {n}\n" * 10)
        assert logs.rotate(path, max_bytes=50, keep=2) == len(f"generation {n}\n") * 10

    assert sorted(os.listdir(tmp_path)) == ["server.log", "server.log.1", "server.log.2"]
    assert os.stat(path).st_size == 0 and os.stat(path).st_ino == inode, "the file the server holds, emptied"
    assert (tmp_path / "server.log.1").read_text() == "generation 3\n" * 10
    assert (tmp_path / "server.log.2").read_text() == "generation 2\n" * 10
    assert stat.S_IMODE((tmp_path / "server.log.1").stat().st_mode) == 0o600


def test_rotation_never_follows_a_link_the_server_could_plant(tmp_path):
    elsewhere = tmp_path / "agent-file"
    elsewhere.write_text("x" * 100)
    (tmp_path / "server.log").symlink_to(elsewhere)
    assert logs.rotate(str(tmp_path / "server.log"), max_bytes=10, keep=2) is None
    assert elsewhere.read_text() == "x" * 100


def test_a_log_rotated_a_moment_ago_still_shows_the_lines_before_the_rotation(tmp_path):
    path = write_log(tmp_path / "server.log", [f"old {i}" for i in range(50)])
    logs.rotate(path, max_bytes=10, keep=2)
    with open(path, "a") as f:
        f.write("new 0\nnew 1\n")

    tail = logs.read_tail(path, 40)  # 40 bytes: "new 0\nnew 1\n" and 28 of the older file
    assert tail.lines == ["old 46", "old 47", "old 48", "old 49", "new 0", "new 1"] and tail.cut
    assert logs.read_tail(path, 10_000) == logs.Tail(
        lines=[f"old {i}" for i in range(50)] + ["new 0", "new 1"], cut=False
    )
    assert supervisor.tail(path, lines=3) == "old 49\nnew 0\nnew 1"
    with open(path, "a") as f:
        f.write("new 2\n")
    logs.rotate(path, max_bytes=10, keep=2)  # older lines now in .2: all of .1 is shown, and the cut said
    assert logs.read_tail(path, 10_000) == logs.Tail(lines=["new 0", "new 1", "new 2"], cut=True)


# Writes numbered lines to its stdout, a write per line, `rate` lines a second (a busy server's access log is a
# few hundred), for the seconds given.
WRITER = """
import sys, time
seconds, rate = float(sys.argv[1]), int(sys.argv[2])
start = time.monotonic()
n = 0
while (elapsed := time.monotonic() - start) < seconds:
    n += 1
    sys.stdout.write(f"line {n:08d} " + "." * 80 + "\\n")
    sys.stdout.flush()
    if n > elapsed * rate:
        time.sleep(n / rate - elapsed)
print(f"wrote {n}", flush=True)
"""
LINE = re.compile(r"^(?:line (\d{8}) \.{80}|wrote (\d+))$")


def test_a_log_is_rotated_while_a_real_process_writes_it_losing_only_the_lines_of_the_instant_of_truncation(tmp_path):
    path = tmp_path / "server.log"
    with supervisor.log_open(path, fresh=True) as log_file:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, "3", "5000"], stdout=log_file)
    flags = int(re.search(r"flags:\s+(\d+)", Path(f"/proc/{writer.pid}/fdinfo/1").read_text()).group(1), 8)
    assert flags & os.O_APPEND, "the server's stdout must append, or it writes on at its old offset after a rotation"
    rotations = 0
    while writer.poll() is None:
        rotations += logs.rotate(str(path), max_bytes=32 * 1024, keep=1000) is not None
    logs.rotate(str(path), max_bytes=0, keep=1000)

    files = sorted(tmp_path.glob("server.log.*"), key=lambda p: -int(p.suffix[1:]))
    numbers, written, gaps, cuts = [], 0, [], 0
    for file in files:
        data = file.read_bytes()
        assert b"\0" not in data, "a writer at its old offset would have left a hole"
        lines = data.decode().splitlines()
        # The last line of a file the truncation ended may be cut: the copy read the first part of a write
        # still under way, and the truncation took the rest. Every other line is whole.
        cut = not data.endswith(b"\n") and file != files[-1]
        cuts += cut
        matches = [LINE.match(line) for line in (lines[:-1] if cut else lines)]
        assert all(matches), "every line whole"
        in_file = [int(m.group(1)) for m in matches if m.group(1)]
        assert in_file == list(range(in_file[0], in_file[0] + len(in_file))), "nothing lost inside a file"
        if numbers:
            gaps.append(in_file[0] - numbers[-1] - 1)
        numbers += in_file
        written = max([written] + [int(m.group(2)) for m in matches if m.group(2)])
    lost = sum(gaps)
    assert min(gaps) >= 0, "in order, none twice"
    assert (numbers[0], numbers[-1], len(numbers)) == (1, written, written - lost), "lost only between files"
    print(
        f"{rotations} rotations of {written} lines written at 5,000 a second: {lost} lost "
        f"({lost / written:.3%}), {cuts} of them cut; at the rotations that lost any, {sorted(g for g in gaps if g)}"
    )
    assert rotations >= 20
    # What copy-truncate risks: the lines written between the copy's last read and the truncation, an instant
    # (longer only when the machine does not run the agent right then).
    assert lost <= 0.05 * written, (lost, written)


@pytest.mark.django_db
def test_the_supervisor_rotates_a_servers_log_past_the_configured_size(cast, tmp_path, settings):
    online_cpu_node(tmp_path)
    root = stand_in_runtime(tmp_path, settings, "#!/bin/sh\nyes 0123456789abcdefghi | head -c 300000\n")
    d = launch_and_wait(root, demo_deployment(cast.team, "demo"))
    settings.PLUGBOARD_SERVER_LOG_MAX_BYTES, settings.PLUGBOARD_SERVER_LOG_KEEP = 100_000, 2
    assert os.path.getsize(d.log_path) > 300_000

    supervisor.Supervisor("cpu-1", None, root).tick()

    assert os.path.getsize(d.log_path) == 0 and os.path.getsize(d.log_path + ".1") > 300_000
    supervisor.Supervisor("cpu-1", None, root).tick()
    assert not os.path.exists(d.log_path + ".2"), "a log within its size is not rotated again"


# The page, the download and the API


@pytest.fixture
def deployment(cast, tmp_path) -> Deployment:
    online_cpu_node(tmp_path)
    deployment = demo_deployment(cast.team, "demo")
    key = unseal(deployment.encrypted_api_key)["api_key"]
    lines = [
        f"(APIServer pid=4242) INFO non-default args: {{'api_key': ['{key}'], 'port': 8000}}",
        *[f"(APIServer pid=4242) INFO loading weights, step {i} {'.' * 60}" for i in range(3000)],  # > 256 KiB
        HEALTH,
        MODELS,
        CHAT,
        "(APIServer pid=4242) WARNING a Warning about the KV cache",
        HEALTH,
        "(APIServer pid=4242) INFO the newest line",
    ]
    Deployment.objects.filter(pk=deployment.pk).update(log_path=write_log(tmp_path / "demo.log", lines))
    deployment.refresh_from_db()
    return deployment


def live_lines(client, deployment, **query) -> str:
    response = client.get(reverse("deployments:log", args=[deployment.pk]), query, headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.content.decode()


def test_the_page_opens_the_viewer_at_the_newest_line_and_follows_it(cast, client, deployment):
    client.force_login(cast.member)
    page = client.get(deployment.get_absolute_url()).content.decode()
    assert 'id="log-body"' in page
    assert f'hx-get="{reverse("deployments:log", args=[deployment.pk])}" hx-trigger="load"' in page
    assert reverse("deployments:log_download", args=[deployment.pk]) in page

    body = live_lines(client, deployment)
    assert 'hx-trigger="every 2s"' in body and "data-follow" in body
    assert body.rstrip().removesuffix("</div>").rstrip().removesuffix("</pre>").endswith("the newest line\n")
    assert "loading weights, step 2999 " in body
    assert "step 1000 " not in body  # at most the last 2,000 lines
    assert "(the log is longer: download it for the rest)" in body


def test_health_checks_are_hidden_by_default_and_shown_with_the_toggle(cast, client, deployment):
    client.force_login(cast.member)
    hidden = live_lines(client, deployment)
    assert "GET /health" not in hidden and "GET /v1/models" not in hidden
    assert "POST /v1/chat/completions" in hidden
    assert "3 health checks hidden." in hidden
    assert 'name="health_checks"' in client.get(reverse("deployments:log", args=[deployment.pk])).content.decode()

    shown = live_lines(client, deployment, health_checks="1")
    assert "GET /health" in shown and "GET /v1/models" in shown
    assert "health_checks=1" in shown  # the polling keeps the toggle


def test_a_search_shows_the_matching_lines_and_counts_them(cast, client, deployment):
    client.force_login(cast.viewer)
    body = live_lines(client, deployment, search="wARNING")
    assert "1 matching line in the last 4 MiB of the log." in body
    assert "a Warning about the KV cache" in body
    assert "the newest line" not in body
    assert "search=wARNING" in body  # the polling keeps the query
    assert "No line matches" in live_lines(client, deployment, search="nowhere")


def test_the_page_without_htmx_is_a_whole_page_with_the_viewer(cast, client, deployment):
    client.force_login(cast.member)
    page = client.get(reverse("deployments:log", args=[deployment.pk]), {"search": "newest"}).content.decode()
    assert "<html" in page and 'value="newest"' in page and "the newest line" in page


def test_the_key_never_shows_in_the_viewer(cast, client, deployment):
    key = unseal(deployment.encrypted_api_key)["api_key"]
    client.force_login(cast.member)
    for query in ({}, {"search": "api_key"}, {"search": "pbk_"}):
        assert key not in live_lines(client, deployment, **query)
    assert "0 matching lines" in live_lines(client, deployment, search=key)  # found nowhere: masked first
    assert "'api_key': ['****']" in html.unescape(live_lines(client, deployment, search="api_key"))


def test_the_download_streams_the_whole_log_with_the_key_masked(cast, client, deployment):
    key = unseal(deployment.encrypted_api_key)["api_key"]
    client.force_login(cast.viewer)
    response = client.get(reverse("deployments:log_download", args=[deployment.pk]))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="demo.log"'
    text = b"".join(response.streaming_content).decode()
    with open(deployment.log_path) as f:
        assert text == f.read().replace(key, "****")
    assert key not in text and "GET /health" in text and "step 0 " in text


def test_the_download_begins_with_the_files_the_log_was_rotated_into(cast, client, deployment):
    key = unseal(deployment.encrypted_api_key)["api_key"]
    before = Path(deployment.log_path).read_bytes()
    logs.rotate(deployment.log_path, max_bytes=0, keep=3)
    with open(deployment.log_path, "a") as f:
        f.write(f"a line after the rotation, {key}\n")
    client.force_login(cast.viewer)

    text = b"".join(client.get(reverse("deployments:log_download", args=[deployment.pk])).streaming_content)

    assert text == before.replace(key.encode(), b"****") + b"a line after the rotation, ****\n"


def test_a_failed_deployment_links_its_reason_to_the_full_log(cast, client, deployment):
    Deployment.objects.filter(pk=deployment.pk).update(status="failed", status_reason="ValueError: too long")
    client.force_login(cast.member)
    page = client.get(deployment.get_absolute_url()).content.decode()
    assert '<a href="#log" id="full-log-link">Full log</a>' in page
    # The log of a deployment that stopped changing is polled no more.
    assert "terminal=1" in live_lines(client, deployment)
    stopped = client.get(
        reverse("deployments:log", args=[deployment.pk]), {"terminal": "1"}, headers={"HX-Request": "true"}
    )
    assert stopped.status_code == 286


def test_an_outsider_gets_404_for_the_log_its_download_and_its_api(cast, client, deployment):
    client.force_login(cast.outsider)
    assert (
        client.get(reverse("deployments:log", args=[deployment.pk]), headers={"HX-Request": "true"}).status_code == 404
    )
    assert client.get(reverse("deployments:log", args=[deployment.pk])).status_code == 404
    assert client.get(reverse("deployments:log_download", args=[deployment.pk])).status_code == 404
    assert api_as(cast.outsider).get(f"/api/v1/deployments/{deployment.pk}/log/").status_code == 404


def test_the_api_answers_the_last_lines_as_json(cast, deployment):
    key = unseal(deployment.encrypted_api_key)["api_key"]
    api = api_as(cast.viewer)
    answer = api.get(f"/api/v1/deployments/{deployment.pk}/log/", {"lines": 3})
    assert answer.status_code == 200
    assert answer.json() == {
        "lines": [
            CHAT,
            "(APIServer pid=4242) WARNING a Warning about the KV cache",
            "(APIServer pid=4242) INFO the newest line",
        ],
        "matches": None,
        "hidden_health_checks": 3,
        "truncated": True,
        "source": "file",
    }
    found = api.get(f"/api/v1/deployments/{deployment.pk}/log/", {"search": "API_KEY", "health_checks": "1"}).json()
    assert found["matches"] == 1 and found["lines"] == [
        "(APIServer pid=4242) INFO non-default args: {'api_key': ['****'], 'port': 8000}"
    ]
    assert key not in str(found)
    assert len(api.get(f"/api/v1/deployments/{deployment.pk}/log/", {"lines": 2000}).json()["lines"]) == 2000


def test_the_api_refuses_an_unknown_or_invalid_parameter(cast, deployment):
    api = api_as(cast.member)
    unknown = api.get(f"/api/v1/deployments/{deployment.pk}/log/", {"line": 5})
    assert unknown.status_code == 400
    assert "“line”" in unknown.json()["detail"]
    too_many = api.get(f"/api/v1/deployments/{deployment.pk}/log/", {"lines": 5000})
    assert too_many.status_code == 400 and "lines" in too_many.json()["errors"]
