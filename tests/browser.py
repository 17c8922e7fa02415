"""Debian's Chromium, headless, for the viewer's browser tests: the page's
DOM after its scripts ran, and screenshots.  Installed with apt-get on first
use when missing (as the review test installs Label Studio)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(command, capture_output=True, check=False, timeout=900)
            if shutil.which("chromium"):
                return shutil.which("chromium")
    raise RuntimeError("the viewer's browser tests need Debian's chromium: apt-get install -y chromium")


def run_page(url: str, *, screenshot: str | None = None, wait_ms: int = 8000,
             size: str = "1400,1000") -> str:
    """The DOM of `url` once its scripts ran (`wait_ms` of virtual time), or
    a screenshot written to `screenshot` (then returns "")."""
    with tempfile.TemporaryDirectory() as profile:
        args = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                f"--virtual-time-budget={wait_ms}"]
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        done = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    return done.stdout
