"""A real Hugging Face-compatible endpoint on loopback, for tests.

It runs olah 0.5.4 (a self-hosted Hugging Face mirror) offline, serving
local git repositories through olah's *local mirror* feature, so that
``huggingface_hub`` pointed at it (``HfApi(endpoint=server.url)`` or
``HF_ENDPOINT``) talks plain HTTP to a real server.  This module imports
only the standard library: olah lives in its own virtualenv
(``<repo>/.venv-olah``, override with ``PLUGBOARD_OLAH``) and is started as
a subprocess.

Set up once::

    python3 -m venv .venv-olah && .venv-olah/bin/pip install olah==0.5.4

Use::

    root = tmp_path / "hub"
    sha1 = make_repo(root, "acme/tiny", {"config.json": b"{}"})
    with HubServer(root) as hub:
        HfApi(endpoint=hub.url).model_info("acme/tiny", revision="main")
        sha2 = make_repo(root, "acme/tiny", {"config.json": b'{"a": 1}'})  # live

Layout olah expects (``[basic] mirrors-path`` in its TOML config): one
*non-bare* git repository per repo at ``<root>/models/<org>/<name>``
(``datasets``/``spaces`` for other repo types).  Git LFS files are pointer
blobs with the object at ``<repo>/.git/lfs/objects/<aa>/<bb>/<sha256>``;
``make_repo(..., lfs=...)`` writes both without needing git-lfs.

Known differences from huggingface.co (olah 0.5.4 local mirror, verified by
the self-check at the bottom, ``python tests/support/hub_server.py``):

* ``GET .../resolve/...`` ignores ``Range``: always 200 with the whole body.
* ``model_info(..., files_metadata=True)`` siblings carry only ``rfilename``
  (size/blob_id/lfs are None); ``list_repo_tree``/``get_paths_info`` do carry
  size, blob_id and lfs (sha256, size).
* A missing file or a bad revision answers 401 ``RepoNotFound`` (so
  ``RepositoryNotFoundError``), not ``EntryNotFoundError`` /
  ``RevisionNotFoundError``; a plain GET of a missing file is a 500.
* HEAD gives ``Content-Length``, ``X-Repo-Commit`` and an unquoted ``ETag``
  (git blob sha, or the sha256 for LFS files); no ``X-Linked-Size``/
  ``X-Linked-Etag``, no redirect for LFS files.
* ``list_repo_commits`` fails in huggingface_hub (``KeyError: 'user'``).
* ``model_info(repo_id)`` with no revision needs a seed file in olah's cache;
  ``HubServer.refresh()`` writes it (done by ``start()`` and
  ``HubServer.make_repo``), pointing at the repo's git ``HEAD``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

__all__ = [
    "GIT_IDENTITY",
    "HubServer",
    "HubServerError",
    "make_repo",
    "olah_available",
    "olah_executable",
    "repo_path",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
OLAH_ENV_VAR = "PLUGBOARD_OLAH"
REPO_TYPE_DIRS = {"model": "models", "dataset": "datasets", "space": "spaces"}
GIT_IDENTITY = ("Plugboard Tests", "tests@plugboard.invalid")

FileContent = bytes | str | Path | None


class HubServerError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# git repositories


def repo_path(root: Path, repo_id: str, repo_type: str = "model") -> Path:
    """Where olah looks for ``repo_id``: ``<root>/<models|datasets|spaces>/<org>/<name>``."""
    if repo_type not in REPO_TYPE_DIRS:
        raise ValueError(f"repo_type must be one of {sorted(REPO_TYPE_DIRS)}")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
    return Path(root) / REPO_TYPE_DIRS[repo_type] / parts[0] / parts[1]


def _git(repo: Path, *args: str) -> str:
    name, email = GIT_IDENTITY
    cmd = [
        "git",
        "-c",
        f"user.name={name}",
        "-c",
        f"user.email={email}",
        "-c",
        "commit.gpgsign=false",
        "-c",
        "tag.gpgsign=false",
        "-c",
        "core.hooksPath=/dev/null",
        "-C",
        str(repo),
        *args,
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HubServerError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    return proc.stdout.strip()


def _lfs_pointer(repo: Path, source: bytes | Path) -> bytes:
    """Store ``source`` as an LFS object inside ``repo`` and return its pointer."""
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
        size = len(source)
    else:
        size = 0
        with open(source, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    oid = digest.hexdigest()
    obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    obj.parent.mkdir(parents=True, exist_ok=True)
    if not obj.exists():
        if isinstance(source, bytes):
            obj.write_bytes(source)
        else:
            shutil.copyfile(source, obj)
    # olah only recognises pointers of 121..149 bytes in exactly this form.
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def make_repo(
    root: Path,
    repo_id: str,
    files: Mapping[str, FileContent],
    *,
    message: str | None = None,
    branch: str = "main",
    tag: str | None = None,
    lfs: bool | Collection[str] = (),
    repo_type: str = "model",
) -> str:
    """Commit ``files`` to the git repository serving ``repo_id``; return the commit sha.

    Creates the repository (non-bare, default branch ``branch``) the first
    time; later calls add a commit on top of ``branch`` (creating the branch
    from the current default branch if it does not exist yet), so tests can
    change a repo after a model was registered.  The default branch stays
    checked out, so ``HEAD`` (what ``model_info`` without revision returns)
    is always the default branch.

    ``files`` maps repo paths (``"sub/dir/x.bin"``) to bytes, str (UTF-8),
    a ``Path`` to copy, or None to delete the file.  Files are committed as
    plain git blobs unless named in ``lfs`` (or ``lfs=True`` for all of this
    commit's files), in which case they become LFS pointers + objects.
    ``tag`` (lightweight, moved if it exists) is put on the new commit.
    """
    repo = repo_path(root, repo_id, repo_type)
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", branch)
    default = _git(repo, "symbolic-ref", "--short", "HEAD")
    switched = branch != default
    if switched:
        exists = (
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(repo),
                    "rev-parse",
                    "--verify",
                    "-q",
                    f"refs/heads/{branch}",
                ],
                check=False,
                capture_output=True,
            ).returncode
            == 0
        )
        _git(repo, "checkout", "-q", *([] if exists else ["-b"]), branch)
    try:
        for name, content in files.items():
            target = repo / name
            if content is None:
                _git(repo, "rm", "-q", "--ignore-unmatch", "--", name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                content = content.encode()
            if lfs is True or (not isinstance(lfs, bool) and name in lfs):
                target.write_bytes(_lfs_pointer(repo, content))
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        _git(repo, "add", "-A")
        _git(
            repo,
            "commit",
            "-q",
            "--allow-empty",
            "--no-verify",
            "-m",
            message or f"update {', '.join(files) or 'nothing'}",
        )
        if tag:
            _git(repo, "tag", "-f", tag)
        return _git(repo, "rev-parse", "HEAD")
    finally:
        if switched:
            _git(repo, "checkout", "-q", default)


# --------------------------------------------------------------------------
# the server


def olah_executable() -> Path:
    """``olah-cli`` to run: ``$PLUGBOARD_OLAH`` (the executable, or a venv dir), else ``<repo>/.venv-olah``."""
    override = os.environ.get(OLAH_ENV_VAR)
    path = Path(override) if override else REPO_ROOT / ".venv-olah"
    if path.is_dir():
        path = path / "bin" / "olah-cli"
    return path


def olah_available() -> bool:
    exe = olah_executable()
    return exe.is_file() and os.access(exe, os.X_OK)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_live_servers: weakref.WeakSet[HubServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live_servers):
        server.stop()


class HubServer:
    """olah serving the git repos under ``repos_root`` offline on 127.0.0.1.

    ``start()`` returns once the server answers HTTP (about 0.5-1 s);
    ``stop()`` kills its process group and removes its temp dir (cache,
    config, log).  Also a context manager.  ``url`` is e.g.
    ``http://127.0.0.1:41234`` (no trailing slash).
    """

    def __init__(
        self,
        repos_root: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        olah: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.repos_root = Path(repos_root).resolve()
        self.host = host
        self.port = port
        self.olah = Path(olah) if olah else olah_executable()
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen | None = None

    # -- paths -------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None or self._proc is None:
            raise HubServerError("HubServer is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def cache_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "cache"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "olah.out"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> HubServer:
        if self._proc is not None:
            return self
        if not (self.olah.is_file() and os.access(self.olah, os.X_OK)):
            raise HubServerError(
                f"olah not found at {self.olah}; run `python3 -m venv .venv-olah && "
                f".venv-olah/bin/pip install olah==0.5.4` in {REPO_ROOT} or set {OLAH_ENV_VAR}"
            )
        self.repos_root.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="plugboard-olah-"))
        self.cache_dir.mkdir()
        fixed_port = self.port is not None
        began = time.monotonic()
        try:
            for _attempt in range(3):
                if not fixed_port:
                    self.port = _free_port(self.host)
                self._launch()
                if self._wait_ready():
                    break
                self._kill()
                if fixed_port:
                    break
            if self._proc is None:
                raise HubServerError(f"olah did not start; log:\n{self.log()[-4000:]}")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        _live_servers.add(self)
        self.refresh()
        return self

    def _config(self) -> str:
        # All settings go in the TOML: with --config olah ignores the other CLI flags.
        # hf-netloc points at the discard port so nothing ever leaves loopback.
        q = json.dumps
        return (
            "[basic]\n"
            f"host = {q(self.host)}\n"
            f"port = {self.port}\n"
            f"repos-path = {q(str(self.cache_dir))}\n"
            f"mirrors-path = [{q(str(self.repos_root))}]\n"
            'hf-scheme = "http"\n'
            'hf-netloc = "127.0.0.1:9"\n'
            'hf-lfs-netloc = "127.0.0.1:9"\n'
            'mirror-scheme = "http"\n'
            f"mirror-netloc = {q(f'{self.host}:{self.port}')}\n"
            f"mirror-lfs-netloc = {q(f'{self.host}:{self.port}')}\n"
            "\n[accessibility]\n"
            "offline = true\n"
        )

    def _launch(self) -> None:
        assert self.workdir is not None
        config = self.workdir / "olah.toml"
        config.write_text(self._config())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for var in (
            "HF_ENDPOINT",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
        ):
            env.pop(var, None)
        env["NO_PROXY"] = env["no_proxy"] = "*"
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [
                    str(self.olah),
                    "--config",
                    str(config),
                    "--log-path",
                    str(self.workdir / "logs"),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group, killed as a whole by stop()
            )

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        request = f"GET /plugboard-ready HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.sendall(request)
                    if s.recv(12).startswith(b"HTTP/1."):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        else:
            # the leader is gone; reap any stragglers left in its group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self) -> None:
        self._kill()
        _live_servers.discard(self)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- repos -------------------------------------------------------------
    def refresh(self) -> None:
        """Make ``GET /api/<type>/<org>/<name>`` (no revision) work for every repo under the root.

        Offline olah answers it only from cached metadata; seed that cache with
        a record whose "sha" is the symbolic ``HEAD``, which olah then resolves
        in the git repo on every request (so later commits show up).  Call it
        after creating a new repo while the server runs (``make_repo`` below
        does), not after adding commits.
        """
        if self.workdir is None:
            return
        stamp = datetime.now(UTC).isoformat()
        for type_dir in REPO_TYPE_DIRS.values():
            for git_dir in sorted((self.repos_root / type_dir).glob("*/*/.git")):
                repo = git_dir.parent
                seed = (
                    self.cache_dir
                    / "api"
                    / type_dir
                    / repo.parent.name
                    / repo.name
                    / "revision"
                    / "HEAD"
                    / "meta_head.json"
                )
                if not seed.exists():
                    seed.parent.mkdir(parents=True, exist_ok=True)
                    seed.write_text(json.dumps({"sha": "HEAD", "lastModified": stamp}))

    def make_repo(self, repo_id: str, files: Mapping[str, FileContent], **kwargs) -> str:
        """``make_repo(self.repos_root, ...)`` plus ``refresh()``."""
        sha = make_repo(self.repos_root, repo_id, files, **kwargs)
        self.refresh()
        return sha


# --------------------------------------------------------------------------
# self-check: python tests/support/hub_server.py  (with the console venv)


def _fake_safetensors(n_bytes: int) -> bytes:
    n_floats = n_bytes // 4
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "weight": {
                "dtype": "F32",
                "shape": [n_floats],
                "data_offsets": [0, n_floats * 4],
            },
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + os.urandom(n_floats * 4)


def _self_check() -> int:  # pragma: no cover - manual probe
    import urllib.error
    import urllib.request

    from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
    from huggingface_hub import __version__ as hf_version

    results: list = []

    def _summary(resp):
        status, headers, body = resp
        return status, len(body), headers.get("content-range")

    def check(name, fn, expect=None):
        try:
            value = fn()
            ok = expect is None or expect(value)
            results.append((ok, name, repr(value)[:240]))
        except Exception as exc:
            text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:240]
            ok = expect == "raises" or (isinstance(expect, type) and isinstance(exc, expect))
            results.append((ok, name, text))

    def http(method, url, headers=None):
        req = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    tmp = Path(tempfile.mkdtemp(prefix="plugboard-hubcheck-"))
    root = tmp / "hub"
    repo_id = "acme/tiny-model"
    weights = _fake_safetensors(5 * 1024 * 1024)
    lfs_blob = os.urandom(3 * 1024 * 1024)
    config = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}\n'
    sha1 = make_repo(
        root,
        repo_id,
        {
            "config.json": config,
            "model.safetensors": weights,  # plain 5 MB git blob, no LFS
            "lfs/big.bin": lfs_blob,  # stored as an LFS pointer + object
        },
        lfs={"lfs/big.bin"},
        tag="v1.0",
        message="initial",
    )

    server = HubServer(root)
    print(f"huggingface_hub {hf_version}; olah at {server.olah}")
    try:
        server.start()
        url = server.url
        print(f"olah started in {server.startup_seconds:.2f}s at {url}")
        api = HfApi(endpoint=url)
        dl_dir = tmp / "hf-cache"

        def rf(rev, f):
            return f"{url}/{repo_id}/resolve/{rev}/{f}"

        # -- metadata
        for rev in ("main", sha1, "v1.0"):
            check(
                f"model_info(revision={rev[:12]}).sha",
                lambda rev=rev: api.model_info(repo_id, revision=rev).sha,
                lambda v: v == sha1,
            )
        check(
            "model_info() without revision (seeded HEAD)",
            lambda: api.model_info(repo_id).sha,
            lambda v: v == sha1,
        )
        check(
            "model_info(files_metadata=True) sibling sizes [GAP: None]",
            lambda: {
                s.rfilename: (s.size, s.lfs)
                for s in api.model_info(repo_id, revision="main", files_metadata=True).siblings
            },
            lambda v: v["model.safetensors"][0] == len(weights),
        )
        check(
            "list_repo_files(revision=main)",
            lambda: sorted(api.list_repo_files(repo_id, revision="main")),
            lambda v: v == ["config.json", "lfs/big.bin", "model.safetensors"],
        )
        check(
            "list_repo_tree(recursive) sizes + lfs sha256",
            lambda: {
                e.path: (e.size, e.lfs.sha256 if e.lfs else None)
                for e in api.list_repo_tree(repo_id, revision="v1.0", recursive=True)
                if hasattr(e, "size")
            },
            lambda v: (
                v["model.safetensors"] == (len(weights), None)
                and v["lfs/big.bin"] == (len(lfs_blob), hashlib.sha256(lfs_blob).hexdigest())
            ),
        )
        check(
            "get_paths_info",
            lambda: [
                (p.path, p.size, p.blob_id) for p in api.get_paths_info(repo_id, ["model.safetensors"], revision=sha1)
            ],
            lambda v: v[0][1] == len(weights),
        )
        check(
            "list_repo_refs",
            lambda: api.list_repo_refs(repo_id),
            lambda v: v.branches[0].target_commit == sha1 and v.tags[0].name == "v1.0",
        )
        check(
            "list_repo_commits",
            lambda: [c.commit_id for c in api.list_repo_commits(repo_id)],
        )
        check(
            "repo_exists(existing)",
            lambda: api.repo_exists(repo_id),
            lambda v: v is True,
        )
        check(
            "repo_exists(missing)",
            lambda: api.repo_exists("acme/nope"),
            lambda v: v is False,
        )
        check(
            "file_exists",
            lambda: api.file_exists(repo_id, "config.json", revision="main"),
            lambda v: v is True,
        )

        # -- downloads
        check(
            "hf_hub_url(endpoint=)",
            lambda: hf_hub_url(repo_id, "config.json", revision="main", endpoint=url),
            lambda v: v == rf("main", "config.json"),
        )
        check(
            "get_hf_file_metadata (HEAD)",
            lambda: api.get_hf_file_metadata(url=rf("main", "model.safetensors")),
            lambda v: v.size == len(weights) and v.commit_hash == sha1,
        )
        check(
            "hf_hub_download config.json @main",
            lambda: Path(
                hf_hub_download(
                    repo_id,
                    "config.json",
                    revision="main",
                    endpoint=url,
                    cache_dir=dl_dir,
                )
            ).read_bytes(),
            lambda v: v == config,
        )
        check(
            "hf_hub_download 5MB plain blob @sha",
            lambda: (
                Path(
                    hf_hub_download(
                        repo_id,
                        "model.safetensors",
                        revision=sha1,
                        endpoint=url,
                        cache_dir=dl_dir,
                    )
                ).read_bytes()
                == weights
            ),
            lambda v: v is True,
        )
        check(
            "hf_hub_download 3MB LFS file @tag",
            lambda: (
                Path(
                    hf_hub_download(
                        repo_id,
                        "lfs/big.bin",
                        revision="v1.0",
                        endpoint=url,
                        cache_dir=dl_dir,
                    )
                ).read_bytes()
                == lfs_blob
            ),
            lambda v: v is True,
        )
        check(
            "parse_safetensors_file_metadata (works, but downloads whole file)",
            lambda: (
                api.parse_safetensors_file_metadata(repo_id, "model.safetensors", revision="main")
                .tensors["weight"]
                .shape
            ),
        )

        # -- raw HTTP
        for f in ("model.safetensors", "lfs/big.bin"):
            check(
                f"HEAD resolve/main/{f} headers",
                lambda f=f: {
                    k.lower(): v
                    for k, v in http("HEAD", rf("main", f))[1].items()
                    if k.lower()
                    in (
                        "content-length",
                        "x-repo-commit",
                        "etag",
                        "x-linked-size",
                        "x-linked-etag",
                        "accept-ranges",
                    )
                },
            )
            check(
                f"GET Range: bytes=0-7 on {f} -> (status, len, content-range) [expect 206, 8]",
                lambda f=f: _summary(http("GET", rf("main", f), {"Range": "bytes=0-7"})),
                lambda v: v[0] == 206 and v[1] == 8,
            )
        check(
            "GET with Authorization: Bearer (ignored?)",
            lambda: http("GET", rf("main", "config.json"), {"Authorization": "Bearer hf_fake"})[0],
            lambda v: v == 200,
        )
        check(
            "HfApi(token=...).model_info",
            lambda: HfApi(endpoint=url, token="hf_fake").model_info(repo_id, revision="main").sha,
            lambda v: v == sha1,
        )

        # -- errors
        from huggingface_hub.errors import (
            EntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        check(
            "missing repo -> RepositoryNotFoundError",
            lambda: api.model_info("acme/nope", revision="main"),
            RepositoryNotFoundError,
        )
        check(
            "missing file -> EntryNotFoundError",
            lambda: hf_hub_download(repo_id, "nope.bin", revision="main", endpoint=url, cache_dir=dl_dir),
            EntryNotFoundError,
        )
        check(
            "bad revision (model_info) -> RevisionNotFoundError",
            lambda: api.model_info(repo_id, revision="nope"),
            RevisionNotFoundError,
        )
        check(
            "bad revision (download) -> RevisionNotFoundError",
            lambda: hf_hub_download(repo_id, "config.json", revision="nope", endpoint=url, cache_dir=dl_dir),
            RevisionNotFoundError,
        )
        check(
            "raw GET missing file status [real hub: 404]",
            lambda: http("GET", rf("main", "nope.bin"))[0],
            lambda v: v == 404,
        )
        check(
            "raw GET missing repo status [real hub: 401 anon]",
            lambda: http("GET", f"{url}/acme/nope/resolve/main/config.json")[0],
            lambda v: v in (401, 404),
        )

        # -- the repo changes while the server runs
        sha2 = server.make_repo(repo_id, {"config.json": b'{"model_type": "mistral"}\n'}, message="v2")
        sha_dev = server.make_repo(repo_id, {"extra.txt": b"dev"}, branch="dev")
        check(
            "second commit visible at main",
            lambda: api.model_info(repo_id, revision="main").sha,
            lambda v: v == sha2,
        )
        check(
            "... and without revision",
            lambda: api.model_info(repo_id).sha,
            lambda v: v == sha2,
        )
        check(
            "old sha still served",
            lambda: api.model_info(repo_id, revision=sha1).sha,
            lambda v: v == sha1,
        )
        check(
            "tag still at first commit",
            lambda: api.model_info(repo_id, revision="v1.0").sha,
            lambda v: v == sha1,
        )
        check(
            "branch dev",
            lambda: api.model_info(repo_id, revision="dev").sha,
            lambda v: v == sha_dev,
        )
        check(
            "new file downloads at new sha",
            lambda: Path(
                hf_hub_download(
                    repo_id,
                    "config.json",
                    revision=sha2,
                    endpoint=url,
                    cache_dir=dl_dir,
                )
            ).read_bytes(),
            lambda v: b"mistral" in v,
        )
        server.make_repo("other/repo", {"README.md": b"# hi\n"})
        check(
            "repo created after start, no revision",
            lambda: api.model_info("other/repo").id,
            lambda v: v == "other/repo",
        )
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    width = max(len(r[1]) for r in results)
    for ok, name, detail in results:
        print(f"{'OK  ' if ok else 'DIFF'} {name:<{width}}  {detail}")
    differ = sum(1 for r in results if not r[0])
    # (worded so CI never mistakes it for a test runner's summary line)
    print(f"summary: {len(results) - differ} as on the real hub, {differ} differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(_self_check())
