"""Headless Chromium driven by Selenium: the gallery's browser test and its screenshot.

Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``;
``.ci/run`` installs them). The flags keep the browser offline and quiet on machines without
a display, GPU or network; every driver gets a fresh profile.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def missing_browser() -> str | None:
    """Why a browser cannot start here (None when it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install)"
    return None


def chromium(download_dir: Path, width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium (a Selenium ``WebDriver``) that saves downloads in
    ``download_dir`` without asking; quit it when done (its profile folder goes with it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="protoseg-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(download_dir), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)}
    )
    quit_driver = driver.quit

    def quit_and_clean() -> None:
        try:
            quit_driver()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


def screenshot(page: Path, output: Path, width: int = 1280, height: int = 900) -> Path:
    """A PNG of the top of an HTML page in headless Chromium (e.g. the naming gallery for the
    README: ``python -m benchmarks.browser GALLERY.html OUT.png``)."""
    driver = chromium(output.parent, width, height)
    try:
        driver.get(Path(page).resolve().as_uri())
        driver.save_screenshot(str(output))
    finally:
        driver.quit()
    return output


if __name__ == "__main__":
    import sys

    reason = missing_browser()
    if reason is not None:
        raise SystemExit(f"benchmarks.browser: {reason}")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
