"""The HTML profile report: self-contained, and a real browser renders it (headless chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from spikegpt_deploy.profiling import profile_model
from spikegpt_deploy.profiling.html import render_html, write_html

from conftest import make_tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def result():
    model = make_tiny_model(n_layer=2, n_embd=16, scale=8.0)
    ids = np.random.RandomState(1).randint(0, 13, 30)
    return profile_model(model, ids, ["loihi2", "spinnaker2", "truenorth"],
                         meta={"model": "tiny.pt", "data": "random", "split": "valid"})


def test_html_is_self_contained(result):
    page = render_html(result)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert len(re.findall(r'<img alt="plot" src="data:image/png;base64,[A-Za-z0-9+/=]+">',
                          page)) == 3
    # nothing to fetch: no scripts, links, remote images or URLs of any kind
    assert not re.search(r"<script|<link|https?://|src=\"(?!data:)", page)
    for text in ("Firing rates", "Targets compared", "Unsupported", "Figures used",
                 "truenorth", "ANN on cmos45nm", "paper formula", "Latency per token",
                 "chip timesteps", "host compute", "chip-host transfers", "slowest core",
                 "Prefill and decode", "loihi2: prefill", "loihi2: decode"):
        assert text in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install -y chromium) so the browser rendering cannot be checked")
def test_chromium_renders_the_report(result, tmp_path):
    from matplotlib.image import imread

    html_path = write_html(result, tmp_path / "report.html")
    png = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
           "--window-size=1200,2000", html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert png.is_file(), proc.stderr[-2000:]
    pixels = imread(str(png))[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05                       # not a blank page
    assert (pixels.reshape(-1, 3).max(axis=1) - pixels.reshape(-1, 3).min(axis=1)).max() > 0.3
