"""Debian's Chromium driven by Playwright (browser downloads fail here, so
Playwright gets `executable_path`)."""

from __future__ import annotations

import os
import shutil

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps dialing out, which this closed network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return os.environ.get("PLUGBOARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
