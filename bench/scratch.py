"""A benchmark's own world, and its removal: a temporary var folder with the console's keys, a database of
its own (a scratch database on the PostgreSQL server DATABASE_URL names, else SQLite in the folder), Django
set up and migrated on it, and the embedded Redis in the folder unless REDIS_URL names a server (PostgreSQL
runs only: a SQLite run is the embedded defaults throughout).

    world = scratch.prepare("plugboard-bench-x-", database_suffix="_bench_x")  # before Django is imported
    try:
        world.start()
        ...
    finally:
        world.close(keep=args.keep)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from config import keys


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def scratch_database(url: str, *, suffix: str) -> tuple[str, str]:
    """(URL of the scratch database, its name) for a PostgreSQL `url`: the same server, the name + `suffix`."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/") + suffix
    return urlunsplit(parts._replace(path="/" + name)), name


def recreate_postgres(url: str, name: str, *, drop_only: bool = False) -> None:
    """Drops the database `name` on `url`'s server (its connections too) and creates it again, empty."""
    import psycopg
    from psycopg import sql

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@dataclass
class Scratch:
    tmp: Path
    given_url: str = ""  # the PostgreSQL DATABASE_URL the run was given, through which the scratch one is dropped
    database: str | None = None  # the scratch PostgreSQL database; None: SQLite in tmp
    redis_started: bool = False  # whether start() started the embedded Redis (and close() stops it)

    @property
    def where(self) -> str:
        return f"PostgreSQL database {self.database}" if self.database else f"SQLite in {self.tmp}"

    def start(self) -> None:
        """Sets Django up, starts the embedded Redis if REDIS_URL names none, and migrates the database."""
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from config import embedded_redis

        self.redis_started = embedded_redis.ensure_running(settings.REDIS_URL)
        call_command("migrate", verbosity=0)

    def close(self, *, keep: bool) -> None:
        """Closes this process's connections, stops the embedded Redis it started, and removes the database and
        the folder (both kept, and said so, with `keep`)."""
        if "django.db" in sys.modules:
            from django.db import connections

            connections.close_all()
        if self.redis_started:
            from django.conf import settings

            from config import embedded_redis

            embedded_redis.stop(settings.REDIS_URL)
        if self.database and not keep:
            recreate_postgres(self.given_url, self.database, drop_only=True)
        if keep:
            kept = f" and the database {self.database}" if self.database else ""
            log(f"kept {self.tmp} (server logs, SQLite files){kept}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def prepare(prefix: str, *, database_suffix: str | None, reuse: bool = False) -> Scratch:
    """Before Django is imported: a temporary folder as the console's var folder, with its keys, and the
    database to use. With `database_suffix` and a PostgreSQL DATABASE_URL, a database of that name plus the
    suffix on the same server, created afresh (or, with `reuse`, the one a kept run left); otherwise SQLite
    and the embedded Redis in the folder."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / "staticfiles").mkdir()  # Django's static files middleware warns about a missing STATIC_ROOT otherwise
    os.environ.update(PLUGBOARD_VAR_DIR=str(tmp), DJANGO_SETTINGS_MODULE="config.settings")
    keys.ensure_files(tmp)  # the console's keys, as `make run` writes them
    url = os.environ.get("DATABASE_URL", "")
    if database_suffix is not None and url.startswith(("postgres://", "postgresql://")):
        os.environ["DATABASE_URL"], name = scratch_database(url, suffix=database_suffix)
        if not reuse:
            recreate_postgres(url, name)
        return Scratch(tmp, given_url=url, database=name)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    return Scratch(tmp)
