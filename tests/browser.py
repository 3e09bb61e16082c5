"""Headless Chromium for the tests, driven by Playwright for Python.

The browser is Debian's ``chromium`` (installed by tests/services/setup.sh, which ``make test`` runs), not
one Playwright downloads: the machine reaches only package registries. The flags keep Chromium from
calling home (its connections would be refused here) and let it run as root without a sandbox.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, async_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A fresh headless Chromium (its own empty profile), closed on the way out."""
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: run `make services-setup` (Debian's chromium)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=list(FLAGS))
        try:
            yield browser
        finally:
            await browser.close()
