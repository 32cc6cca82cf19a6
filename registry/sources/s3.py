"""S3 and S3-compatible stores (MinIO, Ceph, an intranet appliance) through boto3."""

from __future__ import annotations

import hashlib
import http.client
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore import UNSIGNED
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from django.conf import settings
from urllib3.exceptions import ConnectTimeoutError as URLLib3ConnectTimeoutError
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.exceptions import ReadTimeoutError as URLLib3ReadTimeoutError

from config.vault import unseal
from registry.sources import network
from registry.sources.base import (
    CHUNK,
    RemoteFile,
    Source,
    SourceError,
    StallGuard,
    StallLimits,
    current_guard,
    error_code,
    guarding,
    read_timed_out,
)

# Under SSE-KMS, S3's ETag is not the MD5 of the object's bytes: it still tells
# a changed object from the one registered, but cannot verify a download.
OPAQUE_ETAG_ENCRYPTION = ("aws:kms", "aws:kms:dsse")


def _remote_file(path: str, head: dict) -> RemoteFile:
    """The manifest entry for an object, from its HEAD answer."""
    verifiable = head.get("ServerSideEncryption") not in OPAQUE_ETAG_ENCRYPTION
    return RemoteFile(
        path=path,
        size=head["ContentLength"],
        checksum=head["ETag"].strip('"'),
        checksum_kind="etag" if verifiable else "",
    )


def _ca_bundle_path(pem: str) -> str:
    # boto3 wants a file: keep one per distinct bundle under VAR_DIR.
    folder = Path(settings.VAR_DIR) / "ca-bundles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(pem.encode()).hexdigest()[:16] + ".pem")
    if not path.exists():
        path.write_text(pem)
    return str(path)


class _GuardedReads(io.RawIOBase):
    """A response's socket reads, each counted by the stall guard of the stream it belongs to."""

    def __init__(self, raw: io.RawIOBase, guard: StallGuard) -> None:
        super().__init__()
        self.raw = raw
        self.guard = guard

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        began = time.monotonic()
        n = self.raw.readinto(buffer)
        self.guard.took(n or 0, time.monotonic() - began)
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class _GuardedResponse(http.client.HTTPResponse):
    """http.client's response, whose reads of the status line, the headers and the body are counted by the
    stall guard of the stream being read in this thread (S3Source.stream_range), if any: a store that drips
    its headers a byte at a time is cut as one that drips its body."""

    def __init__(self, sock, *args, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        guard = current_guard()
        if guard is not None:
            self.fp.close()  # only this reader: the socket stays open
            self.fp = io.BufferedReader(_GuardedReads(sock.makefile("rb", buffering=0), guard))


class _CheckedConnection:
    """urllib3's _new_conn with its lookup and connect replaced by network.connect, so the address checked
    is the address connected to. TLS still verifies the certificate for, and sends SNI of, the host name.
    Its responses read through the stall guard of a download (_GuardedResponse)."""

    response_class = _GuardedResponse

    def _new_conn(self) -> socket.socket:
        try:
            sock = network.connect(self._dns_host, self.port, timeout=self.timeout, source_address=self.source_address)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise URLLib3ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        for option in self.socket_options or ():
            sock.setsockopt(*option)
        return sock


class _CheckedHTTPConnection(_CheckedConnection, AWSHTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnection, AWSHTTPSConnection):
    pass


class _CheckedHTTPPool(AWSHTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(AWSHTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


def _check_every_connection(client) -> None:
    # botocore has no setting for its connection classes. Its HTTP session keeps the pool classes in one
    # dict, shared with every pool manager it has made or will make (proxy managers included).
    client._endpoint.http_session._pool_classes_by_scheme.update(http=_CheckedHTTPPool, https=_CheckedHTTPSPool)


def client_for(connection, *, max_pool: int = 10, read_timeout: float | None = None, attempts: int = 3, session=None):
    """Returns a boto3 S3 client configured from `connection` (endpoint, region,
    addressing style, TLS verification or a private CA, credentials). Its sockets
    wait `read_timeout` seconds for a byte (PLUGBOARD_SOURCE_TIMEOUT by default);
    a request that fails in a way botocore deems transient is sent `attempts` times.
    A client made with the `session` of an earlier one is made in milliseconds
    instead of most of a second (the session keeps the service's model loaded)."""
    secrets = unseal(connection.encrypted_secrets)
    own_keys = bool(secrets.get("access_key_id") and secrets.get("secret_access_key"))
    verify: bool | str = connection.verify_tls
    if connection.verify_tls and connection.ca_bundle.strip():
        verify = _ca_bundle_path(connection.ca_bundle)
    timeout = settings.PLUGBOARD_SOURCE_TIMEOUT
    config = Config(
        s3={"addressing_style": connection.addressing_style or "path"},
        connect_timeout=timeout,
        read_timeout=read_timeout or timeout,
        # total_max_attempts counts the first request; botocore's max_attempts counts only the retries.
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=max_pool,
        # Without keys of its own a connection reads anonymously, never with the console's own credentials
        # (an instance role, AWS_* variables, ~/.aws), unless an administrator allowed that for it.
        signature_version="s3v4" if own_keys or connection.use_ambient_credentials else UNSIGNED,
    )
    client = (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=connection.endpoint_url or None,
        region_name=connection.region or "us-east-1",
        aws_access_key_id=secrets.get("access_key_id") or None,
        aws_secret_access_key=secrets.get("secret_access_key") or None,
        verify=verify,
        config=config,
    )
    _check_every_connection(client)
    if connection.endpoint_url:
        client.meta.events.register_first("needs-retry.s3", _refuse_redirects(connection.endpoint_url))
    return client


def _refuse_redirects(where: str):
    """A botocore handler that stops at a store's redirect. botocore takes a 301, 302 or 307 from S3 for a
    region redirect and asks again, the same store; one that always redirects recursed until Python gave
    up. A custom store has no regions to send the console to, so a redirect from one is an error (AWS
    itself, with no endpoint URL, keeps botocore's region handling: it only ever reaches AWS's own hosts)."""

    def refuse(response=None, **kwargs):
        status = response[0].status_code if response else None
        if status is not None and 300 <= status < 400:
            raise SourceError(
                f"{where} answered HTTP {status} (a redirect), which the console does not follow for S3. "
                "Point the connection at the store's own endpoint."
            )

    return refuse


def describe_error(exc: Exception, connection, *, key: str = "") -> SourceError:
    """Turns a boto3 failure into words a person can act on: fixed sentences with the endpoint, the HTTP
    status and the S3 error code, never the body of an answer (a hostile store would write there what it
    wants a page to show). Never includes secrets."""
    where = connection.endpoint_url or "AWS S3"
    bucket = connection.bucket
    if isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), SourceError):
        exc = exc.kwargs["error"]  # raised under botocore by network.connect
    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, SSLError):
        return SourceError(
            f"TLS failed when talking to {where}: the server's certificate is not trusted. "
            "Add your CA bundle to the connection, or turn off TLS verification for a test store."
        )
    if isinstance(exc, EndpointConnectionError):
        return SourceError(
            f"Could not reach {where}: the host name does not resolve or nothing listens there. "
            "Check the endpoint URL and that this server can reach it."
        )
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return SourceError(f"{where} did not answer in time. Check the endpoint URL and the network in between.")
    if isinstance(exc, NoCredentialsError):
        return SourceError("No credentials: enter an access key and secret for this connection.")
    if isinstance(exc, ClientError):
        code = error_code(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "InvalidClientTokenId"):
            return SourceError(f"{where} does not know this access key. Check the access key id.")
        if code in ("SignatureDoesNotMatch", "AuthorizationHeaderMalformed"):
            return SourceError(f"{where} refused the credentials: the secret key does not match the access key.")
        if code == "ExpiredToken":
            return SourceError("The credentials have expired. Enter fresh ones for this connection.")
        if code == "NoSuchBucket" or (status == 404 and not key):
            return SourceError(f"The bucket “{bucket}” does not exist at {where}. Check the bucket name.")
        if code in ("NoSuchKey", "404") or status == 404:
            return SourceError(f"s3://{bucket}/{key} does not exist.")
        if code == "AccessDenied" or status == 403:
            return SourceError(
                f"Access denied to s3://{bucket}/{key}: the credentials are valid but lack permission "
                "(s3:ListBucket and s3:GetObject are needed)."
            )
        if 300 <= (status or 0) < 400:
            return SourceError(
                f"{where} answered HTTP {status} (a redirect), which the console does not follow for S3. "
                "Point the connection at the store's own endpoint."
            )
        answered = f"HTTP {status}" + (f" ({code})" if code and code != str(status) else "")
        return SourceError(f"{where} answered {answered}.")
    # Other botocore errors can quote what the server sent (a parser error quotes the body): only their kind.
    return SourceError(f"Talking to {where} failed ({type(exc).__name__}).")


# Answers to a listing that mean "this store does not do ListObjectsV2", not "you may not".
UNSUPPORTED = {"NotImplemented", "InvalidArgument", "MethodNotAllowed", "NotSupported", "InvalidRequest"}


def check(connection) -> str:
    """Returns what was checked, or raises SourceError saying what failed.
    HeadBucket is the one request every S3 implementation answers; its answers
    have no body, so a 403 cannot say whether the key, the secret or a
    permission is wrong. Only then a one-key listing is asked, to name which;
    a store that does not know ListObjectsV2 keeps HeadBucket's answer."""
    if not connection.bucket:
        raise SourceError("Name the bucket this connection reads from.")
    client = client_for(connection)
    where = connection.endpoint_url or "AWS S3"
    try:
        client.head_bucket(Bucket=connection.bucket)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
            raise describe_error(exc, connection) from None
        return _list_after_forbidden(client, connection)
    except Exception as exc:  # boto3 raises many kinds; describe_error sorts them out
        raise describe_error(exc, connection) from None
    return (
        f"Connected to {where}: the bucket “{connection.bucket}” exists and these credentials may use it (HeadBucket)."
    )


def _list_after_forbidden(client, connection) -> str:
    """After HeadBucket answered 403: returns what was checked if a one-key listing
    works, or raises SourceError with the most precise reason the listing gives."""
    where = connection.endpoint_url or "AWS S3"
    try:
        client.list_objects_v2(Bucket=connection.bucket, MaxKeys=1)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") not in UNSUPPORTED:
            raise describe_error(exc, connection) from None
    except Exception:
        pass  # the listing could not tell; HeadBucket's answer stands
    else:
        return f"Connected to {where}: HeadBucket was refused, but these credentials may list “{connection.bucket}”."
    raise SourceError(
        f"{where} refused access to the bucket “{connection.bucket}” (HeadBucket answered 403): the access key "
        "or secret is wrong, or the credentials lack permission (s3:ListBucket)."
    )


class S3Source(Source):
    def __init__(self, connection, *, prefix: str) -> None:
        super().__init__()
        self.connection = connection
        self.bucket = connection.bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        session = boto3.session.Session()  # shared: the second client is then made in milliseconds
        self.client = client_for(connection, session=session)
        # The client for object bodies: its read timeout is the downloads' own (PLUGBOARD_FETCH_READ_TIMEOUT), and
        # it asks once. botocore counts a read timeout as transient and asks again (three times in all, as
        # measured against a silent store), so a store that went silent before answering would hold a fetch
        # thread three read timeouts instead of one; a body's reads were never retried anyway, and a failed fetch
        # is asked for again as a whole. Made here, not on first use: the fetch's threads would race to make it.
        self.stream_client = client_for(
            connection, read_timeout=settings.PLUGBOARD_FETCH_READ_TIMEOUT, attempts=1, session=session
        )

    def resolve(self) -> tuple[str, list[RemoteFile]]:
        paths = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) :]
                    if rel and not rel.endswith("/"):  # not a folder marker
                        paths.append(rel)
        except Exception as exc:
            raise describe_error(exc, self.connection, key=self.prefix) from None
        if not paths:
            raise SourceError(f"Nothing found at s3://{self.bucket}/{self.prefix}: no object has that prefix.")
        # A listing does not say how an object is encrypted, which decides what its ETag is worth: a HEAD does.
        files = [self.current(path) for path in paths]
        stamp = hashlib.sha256("".join(f"{f.path}\0{f.checksum}\n" for f in files).encode())
        return "etags:" + stamp.hexdigest()[:16], files

    def stream_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        key = self.prefix + path
        limits = StallLimits.from_settings()
        what = f"s3://{self.bucket}/{key} from {self.connection.endpoint_url or 'AWS S3'}"
        try:
            # The response takes the guard when it is made; its body's reads stay counted after this block.
            with guarding(StallGuard(what, limits)):
                response = self.stream_client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            for data in response["Body"].iter_chunks(CHUNK):
                self.bytes_read += len(data)
                yield data
        except SourceError:
            raise
        except (ReadTimeoutError, URLLib3ReadTimeoutError):
            raise read_timed_out(what, limits) from None
        except Exception as exc:
            raise describe_error(exc, self.connection, key=key) from None

    def current(self, path: str) -> RemoteFile:
        key = self.prefix + path
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise describe_error(exc, self.connection, key=key) from None
        return _remote_file(path, head)
