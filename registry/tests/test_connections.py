"""Storage connections: the test action says exactly what failed, and secrets
never come back out, whatever asks."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from config.vault import unseal
from registry import services
from registry.models import Connection
from registry.tests.helpers import s3_connection
from tests.support.s3_server import ACCESS_KEY, SECRET_KEY, free_port

HUB_TOKEN = "hf_VerySecretHubToken0123456789"


def test_a_working_s3_connection_says_what_it_reached(cast, s3_server):
    s3_server.put_files("models", "", {})
    ok, message = services.connection_test(connection=s3_connection(cast.team, s3_server))

    assert ok, message
    assert message == (
        f"Connected to {s3_server.url}: the bucket “models” exists and these credentials may use it (HeadBucket)."
    )


def test_a_missing_bucket_is_named(cast, s3_server):
    ok, message = services.connection_test(connection=s3_connection(cast.team, s3_server, bucket="nope"))

    assert not ok
    assert message == f"The bucket “nope” does not exist at {s3_server.url}. Check the bucket name."


def test_a_host_name_that_does_not_resolve_is_reported_as_such(cast, s3_server):
    connection = s3_connection(cast.team, s3_server)
    connection.endpoint_url = "http://store.plugboard-test.invalid:9000"
    ok, message = services.connection_test(connection=connection)

    assert not ok
    assert "Could not reach http://store.plugboard-test.invalid:9000: the host name does not resolve" in message


def test_a_port_where_nothing_listens_is_reported(cast, s3_server):
    connection = s3_connection(cast.team, s3_server)
    connection.endpoint_url = f"http://127.0.0.1:{free_port()}"
    ok, message = services.connection_test(connection=connection)

    assert not ok
    assert "or nothing listens there" in message


def test_tls_to_a_server_that_does_not_speak_it_is_a_tls_failure(cast, s3_server):
    connection = s3_connection(cast.team, s3_server)
    connection.endpoint_url = s3_server.url.replace("http://", "https://")
    ok, message = services.connection_test(connection=connection)

    assert not ok
    assert message.startswith("TLS failed when talking to https://127.0.0.1:")


@pytest.fixture(scope="module")
def strict_s3():
    """A second S3 server that checks signatures and permissions, as AWS does."""
    from tests.support.s3_server import S3Server

    server = S3Server(enforce_auth=True).start()
    server.put_files("private-models", "", {})
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("who", "message"),
    [
        ("reader", "Connected to {url}: the bucket “private-models” exists and these credentials may use it"),
        ("bad-secret", "{url} refused the credentials: the secret key does not match the access key."),
        ("unknown-key", "{url} does not know this access key. Check the access key id."),
        ("stranger", "Access denied to s3://private-models/: the credentials are valid but lack permission"),
    ],
)
def test_credentials_are_checked_and_each_failure_named(cast, strict_s3, who, message):
    keys = {
        "reader": strict_s3.reader,
        "bad-secret": (strict_s3.reader[0], "not-the-secret"),
        "unknown-key": ("AKIANOSUCHKEY0000000", "whatever"),
        "stranger": strict_s3.stranger,
    }[who]
    connection = services.connection_create(
        workspace=cast.team, name=who, kind="s3", endpoint_url=strict_s3.url, bucket="private-models",
        secrets={"access_key_id": keys[0], "secret_access_key": keys[1]},
    )  # fmt: skip
    ok, said = services.connection_test(connection=connection)

    assert ok is (who == "reader")
    assert said.startswith(message.format(url=strict_s3.url)), said
    assert keys[1] not in said


def test_a_local_folder_outside_the_allowed_roots_is_refused(cast):
    with pytest.raises(Exception, match="outside the folders an administrator gives this workspace"):
        services.connection_create(workspace=cast.team, name="etc", kind="local", root_path="/etc")


def test_secrets_are_encrypted_at_rest(cast, s3_server):
    connection = s3_connection(cast.team, s3_server)
    stored = bytes(Connection.objects.get(pk=connection.pk).encrypted_secrets)

    assert SECRET_KEY.encode() not in stored and ACCESS_KEY.encode() not in stored
    assert unseal(stored) == {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}


def test_blank_secrets_on_edit_keep_the_saved_ones(cast, s3_server):
    connection = s3_connection(cast.team, s3_server)
    services.connection_update(
        connection=connection, secrets={"access_key_id": "", "secret_access_key": ""}, region="eu-west-1"
    )

    assert unseal(Connection.objects.get(pk=connection.pk).encrypted_secrets)["secret_access_key"] == SECRET_KEY


def test_no_secret_appears_in_any_api_response_page_or_log_line(cast, s3_server, client, caplog):
    caplog.set_level(logging.INFO)
    api = APIClient()
    api.force_authenticate(cast.admin)
    secrets = [SECRET_KEY, ACCESS_KEY, HUB_TOKEN]
    bodies = []

    created = api.post(
        "/api/v1/connections/",
        {"name": "s3", "kind": "s3", "endpoint_url": s3_server.url, "bucket": "models",
         "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        format="json",
    )  # fmt: skip
    hub = api.post(
        "/api/v1/connections/",
        {"name": "hub", "kind": "hf", "endpoint_url": "http://127.0.0.1:9", "token": HUB_TOKEN},
        format="json",
    )
    assert created.status_code == 201 and hub.status_code == 201
    assert created.json()["has_secrets"] is True
    s3_id, hub_id = created.json()["id"], hub.json()["id"]
    bodies += [created.content, hub.content]
    for path in ("/api/v1/connections/", f"/api/v1/connections/{s3_id}/", f"/api/v1/connections/{hub_id}/"):
        bodies.append(api.get(path).content)
    bodies.append(api.post(f"/api/v1/connections/{s3_id}/test/").content)
    bodies.append(api.post(f"/api/v1/connections/{hub_id}/test/").content)  # fails: nothing on port 9
    bodies.append(api.patch(f"/api/v1/connections/{s3_id}/", {"region": "eu-west-1"}, format="json").content)
    bodies.append(api.get("/api/v1/schema/").content)

    client.force_login(cast.admin)
    for name in ("connection_list",):
        bodies.append(client.get(reverse(f"registry:{name}")).content)
    for pk in (s3_id, hub_id):
        for name in ("connection_detail", "connection_edit"):
            bodies.append(client.get(reverse(f"registry:{name}", args=[pk])).content)

    for secret in secrets:
        assert not any(secret.encode() in body for body in bodies), f"{secret} leaked in a response"
        assert secret not in caplog.text, f"{secret} leaked in the log"
    assert caplog.records, "the log was not captured at all"


@pytest.fixture
def old_store(s3_server):
    """An older S3-compatible store: it answers HeadBucket but not ListObjectsV2."""
    from tests.support.old_s3 import OldS3Store

    store = OldS3Store(s3_server.url)
    yield store
    store.close()


@pytest.fixture
def strict_old_store(strict_s3):
    from tests.support.old_s3 import OldS3Store

    store = OldS3Store(strict_s3.url)
    yield store
    store.close()


def test_a_store_without_list_objects_v2_passes_the_test(cast, s3_server, old_store):
    s3_server.put_files("models", "", {})
    connection = s3_connection(cast.team, s3_server)
    connection.endpoint_url = old_store.url
    ok, message = services.connection_test(connection=connection)

    assert ok, message
    assert message == (
        f"Connected to {old_store.url}: the bucket “models” exists and these credentials may use it (HeadBucket)."
    )
    assert old_store.listings_refused == 0


def test_on_such_a_store_a_missing_bucket_is_still_named(cast, s3_server, old_store):
    connection = s3_connection(cast.team, s3_server, bucket="nope")
    connection.endpoint_url = old_store.url
    ok, message = services.connection_test(connection=connection)

    assert not ok
    assert message == f"The bucket “nope” does not exist at {old_store.url}. Check the bucket name."


def test_on_such_a_store_refused_credentials_keep_headbuckets_answer(cast, strict_old_store, strict_s3):
    connection = services.connection_create(
        workspace=cast.team, name="stranger", kind="s3", endpoint_url=strict_old_store.url, bucket="private-models",
        secrets={"access_key_id": strict_s3.stranger[0], "secret_access_key": strict_s3.stranger[1]},
    )  # fmt: skip
    ok, message = services.connection_test(connection=connection)

    assert not ok
    assert message == (
        f"{strict_old_store.url} refused access to the bucket “private-models” (HeadBucket answered 403): "
        "the access key or secret is wrong, or the credentials lack permission (s3:ListBucket)."
    )
    assert strict_old_store.listings_refused == 1


def test_through_the_api_a_failed_test_says_ok_false_and_why(cast, s3_server):
    api = APIClient()
    api.force_authenticate(cast.member)
    s3_server.put_files("models", "", {})
    works = s3_connection(cast.team, s3_server)
    missing = s3_connection(cast.team, s3_server, bucket="nope", name="missing")

    passed = api.post(f"/api/v1/connections/{works.pk}/test/")
    failed = api.post(f"/api/v1/connections/{missing.pk}/test/")

    assert passed.status_code == 200 and passed.json()["ok"] is True
    assert "(HeadBucket)" in passed.json()["message"]
    assert failed.status_code == 200
    assert failed.json()["ok"] is False and failed.json()["last_check_ok"] is False
    assert failed.json()["message"] == f"The bucket “nope” does not exist at {s3_server.url}. Check the bucket name."
    assert failed.json()["last_check_message"] == failed.json()["message"]
