"""The gateway's in-process cache of key grants and routes. A request never
waits on the database for a key or a route it has seen recently; a change
anywhere in the cluster (a revoked key, a deployment that moved, an adapter
attached) reaches every gateway process through `config.changes`, which a
background task polls, and drops the whole cache. If that poll fails, what
is held is trusted for at most STALE_AFTER seconds, so a revocation still
takes effect within a second."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from accounts.services import token_digest
from config import changes
from inference import selectors
from inference.selectors import KeyGrant, Route

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# What is held is trusted this long when the change counter cannot be read.
STALE_AFTER = 1.0
# And never longer than this, in case a change was made without an announcement (an edit in a database shell).
MAX_AGE = 60.0


def read_db(fn: Callable, *args):
    """Runs an ORM read in a worker thread, then gives its connection back."""

    def call():
        try:
            return fn(*args)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)()


class Catalog:
    def __init__(self) -> None:
        self._keys: dict[str, tuple[float, KeyGrant]] = {}
        self._routes: dict[int, tuple[float, dict[str, Route]]] = {}
        self._loading: dict[tuple, asyncio.Future] = {}
        self._epoch = 0  # moves on every clear: a read that began before a clear is not kept
        self._generation: bytes | None = None
        self._confirmed_at = float("-inf")
        self._watcher: asyncio.Task | None = None

    # Reads ------------------------------------------------------------------

    async def grant(self, raw_key: str) -> KeyGrant | None:
        """The grant of `raw_key` (revoked and expired ones too), or None for an unknown key."""
        digest = token_digest(raw_key)
        held = self._keys.get(digest)
        if held is not None and self._fresh(held[0]):
            return held[1]
        grant = await self._load(("key", digest), lambda: read_db(selectors.key_grant, raw_key), self._keys, digest)
        return grant

    async def routes(self, workspace_id: int) -> dict[str, Route]:
        """Every model id of the workspace, with where it is served."""
        held = self._routes.get(workspace_id)
        if held is not None and self._fresh(held[0]):
            return held[1]
        return await self._load(
            ("routes", workspace_id),
            lambda: read_db(selectors.workspace_routes, workspace_id),
            self._routes,
            workspace_id,
        )

    def _fresh(self, fetched_at: float) -> bool:
        now = time.monotonic()
        age = now - fetched_at
        return age < STALE_AFTER or (age < MAX_AGE and now - self._confirmed_at < STALE_AFTER)

    async def _load(self, what: tuple, loader: Callable[[], Awaitable], store: dict, key) -> object:
        """Reads through `loader` once for all the requests that miss at the same time."""
        pending = self._loading.get(what)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(loader, store, key))
            self._loading[what] = pending
            pending.add_done_callback(lambda _: self._loading.pop(what, None))
        return await asyncio.shield(pending)

    async def _fetch(self, loader: Callable[[], Awaitable], store: dict, key) -> object:
        epoch, fetched_at = self._epoch, time.monotonic()
        value = await loader()
        if value is not None and epoch == self._epoch:
            store[key] = (fetched_at, value)
        return value

    # Invalidation -----------------------------------------------------------

    def clear(self) -> None:
        self._epoch += 1
        self._keys.clear()
        self._routes.clear()

    def watch(self) -> None:
        """Starts polling the change counter (once per event loop)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        failing = False
        try:
            while True:
                try:
                    generation = await client.get(changes.ROUTES)
                except Exception as exc:  # any failure: trust the cache less until it reads again
                    if not failing:
                        log.warning(
                            "cannot read the change counter (%s); keys and routes expire after %s s", exc, STALE_AFTER
                        )
                    failing = True
                else:
                    failing = False
                    if generation != self._generation:
                        self._generation = generation
                        self.clear()
                    self._confirmed_at = time.monotonic()
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await client.aclose()
