"""/docs and /redoc load their assets from this server (no CDN), and /docs renders in a browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urljoin

import httpx
import pytest

from app.main import create_app
from tests.api.live import DEADLINE_S, live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_asset_from_this_server(client, page):
    html = client.get(page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)

    assert assets, html
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000 or asset.endswith(".png"), asset


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_docs_render_the_endpoints_in_headless_chromium(settings, shared_engine, tmp_path):
    with live_server(create_app(settings, engine=shared_engine)) as server:
        assert httpx.get(urljoin(server.url, "/docs"), timeout=DEADLINE_S).status_code == 200
        # --virtual-time-budget lets the page's scripts fetch /openapi.json and render before the dump.
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                f"{server.url}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout

    for path in ("/v1/edits", "/v1/generate", "/v1/chat/completions", "/v1/completions", "/v1/models"):
        assert path in dom, f"{path} not rendered on /docs"
    assert "opblock" in dom  # Swagger UI rendered its operation blocks
