"""The Hugging Face hub, a private hub or a mirror, through huggingface_hub."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpcore2
import httpx2
from django.conf import settings
from huggingface_hub import HfApi, hf_hub_url, set_client_factory
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, validate_repo_id

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

PUBLIC_HUB = "https://huggingface.co"


class _GuardedStream(httpcore2.NetworkStream):
    """A connection whose reads are counted by the stall guard of the stream this thread reads, if any
    (HubSource.stream_range), the status line and headers included."""

    def __init__(self, stream: httpcore2.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        guard = current_guard()
        began = time.monotonic()
        data = self._stream.read(max_bytes, timeout)
        if guard is not None:
            guard.took(len(data), time.monotonic() - began)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> _GuardedStream:
        return _GuardedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


def _guarded(pieces: Iterator[bytes], guard: StallGuard) -> Iterator[bytes]:
    """Yields `pieces`, each produced with `guard` counting this thread's reads (and only while it is made:
    the consumer's own reads between pieces are not this stream's)."""
    while True:
        with guarding(guard):
            data = next(pieces, None)
        if data is None:
            return
        yield data


class _CheckedBackend(httpcore2.SyncBackend):
    """httpcore's own backend, connecting through addresses network.py checked (never a second lookup).
    TLS still verifies the certificate for, and sends SNI of, the host name: httpcore takes those from
    the request's origin, not from the socket. Its connections read through the stall guard of a download
    (_GuardedStream)."""

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = network.checked_addresses(host, port)
        except OSError as exc:  # the name does not resolve
            raise httpcore2.ConnectError(str(exc)) from exc
        error = httpcore2.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                stream = super().connect_tcp(str(address), port, timeout, local_address, socket_options)
                return _GuardedStream(stream)
            except httpcore2.ConnectError as exc:
                error = exc
        raise error


def _refuse_redirects_elsewhere(response: httpx2.Response) -> None:
    """Raises RedirectRefused for a redirect to another scheme, host or port (the real hub sends large files
    to a CDN that way: a private hub must serve them itself). Each hop is checked against the one before,
    so every followed hop shares the first one's origin."""
    if not response.has_redirect_location:
        return
    try:
        target = str(response.request.url.join(response.headers["Location"]))
    except httpx2.InvalidURL:
        target = ""
    problem = network.redirect_problem(str(response.request.url), target)
    if problem:
        raise network.RedirectRefused(problem)


def _checked_client() -> httpx2.Client:
    """The client huggingface_hub (and this module) send every request through: each connection to a
    checked address, redirects only to the same origin, no proxy or .netrc from the environment (a proxy
    would be the only address checked, .netrc would send a password to whatever host a connection names)."""
    transport = httpx2.HTTPTransport()
    # httpx has no setting for the network backend; the httpcore pool under its transport has.
    transport._pool._network_backend = _CheckedBackend()
    return httpx2.Client(
        transport=transport,
        trust_env=False,
        follow_redirects=True,
        timeout=None,
        event_hooks={"response": [_refuse_redirects_elsewhere]},
    )


set_client_factory(_checked_client)


def endpoint_of(connection) -> str:
    return (connection.endpoint_url or PUBLIC_HUB).rstrip("/")


def repo_id_of(location: str) -> str:
    """The repository id a location names: the hub reads `org/name`, without surrounding slashes."""
    return location.strip().strip("/")


def repo_id_problem(location: str) -> str | None:
    """Returns which of the hub's rules for repository ids `location` breaks, in
    plain words, or None when it is a valid id. The rules are huggingface_hub's
    own (`validate_repo_id`); its messages speak to programmers, these to users."""
    repo_id = repo_id_of(location)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        pass
    else:
        return None
    said = f"“{repo_id}” is not a repository id"
    if "--" in repo_id or ".." in repo_id:
        return f"{said}: it may not contain “--” or “..”."
    if repo_id.count("/") > 1:
        return (
            f"{said}: it has more than one “/”. Write “name” or “owner/name”; "
            "put a branch, tag or commit in the revision field, not in the location."
        )
    if repo_id.endswith(".git"):
        return f"{said}: it may not end in “.git”. Leave the suffix out."
    return (
        f"{said}: use only letters, digits, “-”, “_” and “.”, not starting or ending with “-” or “.”, "
        "at most 96 characters on each side of the “/”."
    )


def describe_error(exc: Exception, connection, *, repo_id: str = "", revision: str = "") -> SourceError:
    """Turns a hub failure into words a person can act on: fixed sentences with the endpoint, the HTTP
    status and the hub's error code, never the body of an answer. Never includes the token."""
    where = endpoint_of(connection)
    if isinstance(exc, SourceError):  # the console's own refusal (network.py), already in such words
        return exc
    if isinstance(exc, GatedRepoError):
        return SourceError(f"{repo_id} is gated on {where}: accept its terms with the token's account, then retry.")
    if isinstance(exc, RevisionNotFoundError):
        return SourceError(f"{repo_id} has no branch, tag or commit “{revision}” on {where}.")
    if isinstance(exc, RepositoryNotFoundError):
        at = f" at revision “{revision}”" if revision else ""
        return SourceError(
            f"The repository {repo_id}{at} does not exist on {where}, or it is private and the token may not see it."
        )
    if isinstance(exc, EntryNotFoundError):
        return SourceError(f"A file is missing from {repo_id} on {where}.")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            return SourceError(f"{where} refused the token (401). Check or renew the token.")
        if status == 403:
            return SourceError(f"The token may not read {repo_id} on {where} (403).")
        code = error_code(exc.response.headers.get("X-Error-Code")) if exc.response is not None else ""
        return SourceError(f"{where} answered HTTP {status}" + (f" ({code})." if code else "."))
    text = str(exc)
    lowered = text.lower()
    if "certificate" in lowered or "ssl" in lowered:
        return SourceError(f"TLS failed when talking to {where}: its certificate is not trusted.")
    if any(word in lowered for word in ("name or service not known", "nodename", "getaddrinfo", "name resolution")):
        return SourceError(f"The host name of {where} does not resolve. Check the endpoint URL.")
    if any(word in lowered for word in ("connection refused", "connecterror", "all connection attempts failed")):
        return SourceError(f"Could not connect to {where}: nothing answers there. Check the endpoint URL.")
    if "timed out" in lowered or "timeout" in lowered:
        return SourceError(f"{where} did not answer in time.")
    return SourceError(f"Talking to {where} failed: {type(exc).__name__}")


def _api(connection) -> tuple[HfApi, str | None]:
    token = unseal(connection.encrypted_secrets).get("token") or None
    # token=False: without a token of its own a connection reads anonymously, never with HF_TOKEN or a token
    # file of the console's; None lets huggingface_hub find those, for a connection an administrator allowed.
    fallback = None if connection.use_ambient_credentials else False
    return HfApi(endpoint=endpoint_of(connection), token=token or fallback), token


def check(connection) -> str:
    _, token = _api(connection)
    where = endpoint_of(connection)
    session = get_session()
    timeout = settings.PLUGBOARD_SOURCE_TIMEOUT
    try:
        if token:
            response = session.get(f"{where}/api/whoami-v2", headers=build_hf_headers(token=token), timeout=timeout)
            if response.status_code == 401:
                raise SourceError(f"{where} refused the token (401). Check or renew the token.")
            if response.status_code == 200:
                return f"Connected to {where} as {response.json().get('name', 'an unnamed account')}."
            # Mirrors often lack the account API: fall through to a listing.
        response = session.get(f"{where}/api/models", params={"limit": 1}, timeout=timeout)
    except SourceError:
        raise
    except Exception as exc:
        raise describe_error(exc, connection) from None
    if response.status_code >= 400:
        raise SourceError(f"{where} answered HTTP {response.status_code} to a model listing; is it a Hugging Face hub?")
    if token:
        return f"Connected to {where}. It does not say whose the token is; each repository will be read with it."
    return f"Connected to {where} (anonymous: public repositories only)."


class HubSource(Source):
    def __init__(self, connection, *, repo_id: str, revision: str = "") -> None:
        super().__init__()
        self.connection = connection
        self.repo_id = repo_id_of(repo_id)
        self.revision = revision.strip() or None
        self.api, self.token = _api(connection)
        self.commit = ""

    def resolve(self) -> tuple[str, list[RemoteFile]]:
        try:
            info = self.api.model_info(
                self.repo_id,
                revision=self.revision,
                files_metadata=True,
                timeout=settings.PLUGBOARD_SOURCE_TIMEOUT,
            )
        except Exception as exc:
            raise describe_error(exc, self.connection, repo_id=self.repo_id, revision=self.revision or "") from None
        self.commit = info.sha or ""
        try:
            # The tree listing carries sizes and checksums on the hub and on mirrors alike.
            entries = list(self.api.list_repo_tree(self.repo_id, revision=self.commit or self.revision, recursive=True))
        except Exception as exc:
            raise describe_error(exc, self.connection, repo_id=self.repo_id, revision=self.revision or "") from None
        files = []
        for entry in entries:
            if not isinstance(entry, RepoFile):
                continue
            if entry.lfs is not None:
                files.append(RemoteFile(entry.path, entry.lfs.size, entry.lfs.sha256, "sha256"))
            else:
                files.append(RemoteFile(entry.path, entry.size or 0, entry.blob_id or "", "git-sha1"))
        if not files:
            raise SourceError(f"The repository {self.repo_id} has no files at {self.revision or 'its default branch'}.")
        return self.commit, files

    def _ranged_get(self, path: str, start: int, end: int):
        """A streaming GET of bytes [start, end) of `path`, pinned to the resolved commit so every read sees
        the same content (a context manager yielding the response)."""
        url = hf_hub_url(
            self.repo_id, path, revision=self.commit or self.revision, endpoint=endpoint_of(self.connection)
        )
        headers = build_hf_headers(token=self.api.token) | {"Range": f"bytes={start}-{end - 1}"}
        # Connecting is bounded like every call to the hub; a body's reads by the downloads' own read timeout.
        timeout = httpx2.Timeout(settings.PLUGBOARD_SOURCE_TIMEOUT, read=settings.PLUGBOARD_FETCH_READ_TIMEOUT)
        return get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout)

    def stream_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        limits = StallLimits.from_settings()
        what = f"{path} of {self.repo_id} from {endpoint_of(self.connection)}"
        guard = StallGuard(what, limits)
        try:
            with ExitStack() as stack:
                with guarding(guard):  # the request, its status line and its headers
                    response = stack.enter_context(self._ranged_get(path, start, end))
                if response.status_code == 404:
                    raise SourceError(f"{path} is missing from {self.repo_id} on {endpoint_of(self.connection)}.")
                if response.status_code not in (200, 206):
                    raise SourceError(
                        f"{endpoint_of(self.connection)} answered HTTP {response.status_code} for {path}."
                    )
                # A server that ignores Range (some mirrors do) sends the whole file: skip to `start`, stop at `end`.
                position = start if response.status_code == 206 else 0
                for data in _guarded(response.iter_bytes(CHUNK), guard):
                    self.bytes_read += len(data)
                    if position + len(data) > start:
                        yield data[max(0, start - position) : end - position]
                    position += len(data)
                    if position >= end:
                        break
        except SourceError:
            raise
        except httpx2.ReadTimeout:
            raise read_timed_out(what, limits) from None
        except Exception as exc:
            raise describe_error(exc, self.connection, repo_id=self.repo_id) from None

    def supports_ranges(self, path: str) -> bool:
        # Some mirrors ignore Range and send the whole file; asking for one byte tells.
        try:
            with self._ranged_get(path, 0, 1) as response:
                return response.status_code == 206
        except Exception as exc:
            raise describe_error(exc, self.connection, repo_id=self.repo_id) from None

    def current(self, path: str) -> RemoteFile:
        for f in self.resolve()[1]:
            if f.path == path:
                return f
        raise SourceError(f"{path} is no longer in {self.repo_id} at {self.commit or self.revision}.")
