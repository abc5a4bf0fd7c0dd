"""Screenshots of HTML files with headless Chromium (for checking how a report looks).

Chromium is optional: :func:`render_html_to_png` returns False where none is installed, so
callers (and tests) can skip.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CANDIDATES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable: ``/usr/bin/chromium`` or one of :data:`CANDIDATES` on PATH."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_command(executable: str, html_path: Path, png_path: Path, user_data_dir: Path, width: int,
                     height: int) -> list[str]:
    """The command line of one headless screenshot (offline: no network, sync or updates)."""
    return [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}",
            f"--screenshot={png_path}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
            html_path.resolve().as_uri()]


def render_html_to_png(html_path: str | Path, png_path: str | Path, width: int = 1280, *, height: int = 2400,
                       timeout: float = 120.0) -> bool:
    """Take a screenshot of the top ``width`` x ``height`` px of an HTML file.

    Args:
        html_path: the page (opened as a ``file://`` URL).
        png_path: the PNG to write.
        width: window width in px.
        height: window height in px (what is below it is not captured).
        timeout: seconds before Chromium is stopped.

    Returns:
        True when the PNG was written; False when no Chromium is installed or it failed (the
        reason is logged as a warning).
    """
    executable = find_chromium()
    if executable is None:
        return False
    html_path, png_path = Path(html_path), Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if png_path.exists():
        png_path.unlink()
    with tempfile.TemporaryDirectory(prefix="histomag-chromium-") as tmp:
        profile = Path(tmp) / "profile"
        env = {**os.environ, "HOME": tmp}  # keep Chromium's caches and crash dumps out of the real home
        cmd = chromium_command(executable, html_path, png_path, profile, width, height)
        try:
            done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("chromium screenshot of %s failed: %s", html_path, exc)
            return False
    if done.returncode != 0 or not png_path.is_file() or png_path.stat().st_size == 0:
        tail = " ".join((done.stderr or "").split())[-300:]
        log.warning("chromium screenshot of %s failed (exit %s): %s", html_path, done.returncode, tail)
        return False
    return True
