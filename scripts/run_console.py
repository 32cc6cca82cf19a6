"""`make run`: prepares the database and the demo content, then starts the
console's processes (web, Celery worker, Celery beat) and stops them all
together on Ctrl-C or when one of them dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from config import keys  # noqa: E402 (needs ROOT on the path)


def manage(*args: str, env: dict[str, str] | None = None, check: bool = True) -> int:
    argv = [sys.executable, str(ROOT / "manage.py"), *args]
    return subprocess.run(argv, check=check, cwd=ROOT, env={**os.environ, **(env or {})}).returncode


def ensure_keys(var: Path) -> str | None:
    """Writes SECRET_KEY and PLUGBOARD_SECRETS_KEY to files under `var` when
    neither the environment nor a file has them, so a laptop starts with no
    set-up. Returns the key that sealed the stored secrets of a database from
    before these files existed, which must be re-sealed with the new one; else None."""
    upgrading = (var / "db.sqlite3").exists() and not keys.read(var, "PLUGBOARD_SECRETS_KEY")
    # Such a database sealed with a key derived from SECRET_KEY: the one in use then, or the development key.
    old = keys.derived_secrets_key(keys.read(var, "SECRET_KEY") or keys.DEVELOPMENT_SECRET_KEY)
    for path in keys.ensure_files(var):
        print(f"Wrote a new key to {path} (keep it: it signs sign-ins or seals stored credentials)")
    return old if upgrading else None


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Before Django starts: its settings refuse to load without these keys outside DEBUG.
    old_secrets_key = ensure_keys(Path(os.environ.get("PLUGBOARD_VAR_DIR", ROOT / "var")))
    import django

    django.setup()
    from django.conf import settings

    from config import embedded_redis

    host = os.environ.get("PLUGBOARD_HOST", "127.0.0.1")
    port = os.environ.get("PLUGBOARD_PORT", "8000")
    Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)
    started_redis = embedded_redis.ensure_running(settings.REDIS_URL)
    if started_redis:
        print(f"Started the embedded Redis at {settings.REDIS_URL}")
    manage("migrate", "--no-input", "-v", "0")
    if old_secrets_key and manage(
        "rotate_secrets_key", env={"PLUGBOARD_SECRETS_KEY_OLD": old_secrets_key}, check=False
    ):
        print("Stored credentials could not be re-sealed with the new key; enter them again.", file=sys.stderr)
    manage("collectstatic", "--no-input", "-v", "0")
    manage("ensure_admin")
    demo = Path(settings.VAR_DIR) / "demo-store"
    if (demo / "smollm2-135m-instruct" / ".complete").exists():
        manage("register_demo", "--store", str(demo))

    log_dir = Path(settings.VAR_DIR) / "log"
    log_dir.mkdir(exist_ok=True)
    var = Path(settings.VAR_DIR)
    node_name = os.environ.get("PLUGBOARD_NODE_NAME", "local")
    quota = os.environ.get("PLUGBOARD_CACHE_QUOTA", "20G")
    celery = str(BIN / "celery")
    # fmt: off
    commands = {
        "web": [str(BIN / "uvicorn"), "config.asgi:application", "--host", host, "--port", port, "--no-access-log"],
        "worker": [celery, "-A", "config", "worker", "-Q", "control", "-c", "2", "-n", "control@%h", "-l", "INFO"],
        "beat": [celery, "-A", "config", "beat", "-l", "INFO", "-s", str(var / "celerybeat-schedule")],
        # This machine's node agent: its CPU (or GPUs), its vLLM runtime and its artifact cache.
        "node": [sys.executable, str(ROOT / "manage.py"), "node_agent", "--name", node_name, "--address", "127.0.0.1",
                 "--cache-dir", str(var / "cache"), "--cache-quota", quota],
    }
    # fmt: on
    processes = {}
    for name, argv in commands.items():
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        processes[name] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"Plugboard is running at http://{host}:{port}/  (logs in {log_dir}; Ctrl-C stops it)", flush=True)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            dead = [name for name, p in processes.items() if p.poll() is not None]
            if dead:
                print(f"{', '.join(dead)} stopped unexpectedly; see {log_dir}. Stopping the rest.", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        for p in processes.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in processes.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if started_redis:
            embedded_redis.stop(settings.REDIS_URL)
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
