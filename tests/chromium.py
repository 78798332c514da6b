"""Render a local HTML file in headless Chromium: a screenshot and the DOM, as a person's browser would see it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


def chromium() -> str:
    """The browser, or a skip (never a pass) when it is genuinely not installed (.ci/run installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


def render(page: Path, screenshot: Path) -> str:
    """Take a 1200x2000 screenshot of `page` into `screenshot` and return the rendered DOM."""
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="orch-chromium-") as profile:
        common = [browser, *FLAGS, f"--user-data-dir={profile}"]
        subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1200,2000", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
        dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                             check=True).stdout
    return dom


def dump_url(url: str, virtual_time_ms: int = 0, timeout: float = 300) -> str:
    """The DOM of a live page after its scripts ran: with `virtual_time_ms`, Chromium runs the page's timers for
    that much virtual time, which stands still while a request is waiting (so long polls run to their end)."""
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="orch-chromium-") as profile:
        budget = [f"--virtual-time-budget={virtual_time_ms}"] if virtual_time_ms else []
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *budget, "--dump-dom", url],
                              capture_output=True, text=True, timeout=timeout, check=True).stdout


def screenshot_url(url: str, screenshot: Path, virtual_time_ms: int = 5000) -> None:
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="orch-chromium-") as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={virtual_time_ms}",
                        f"--screenshot={screenshot}", "--window-size=1200,2000", url],
                       capture_output=True, timeout=300, check=True)


def assert_not_blank(screenshot: Path) -> None:
    from PIL import Image, ImageStat

    image = Image.open(screenshot).convert("L")
    assert image.size == (1200, 2000)
    stat = ImageStat.Stat(image)
    assert stat.stddev[0] > 5, f"screenshot looks blank (pixel stddev {stat.stddev[0]:.1f})"
    # Plots draw coloured lines: a page of only text and tables would have almost no saturated pixels.
    saturation = Image.open(screenshot).convert("HSV").split()[1]
    saturated = sum(saturation.histogram()[101:])
    assert saturated > 2000, f"only {saturated} coloured pixels: the plots did not render"
