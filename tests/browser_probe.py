"""Load a static page in headless Chromium, as a reader would, and report what went wrong.

`probe(page)` copies the page beside itself with a small script first in <head> that records
every error event (a resource that failed to load, an uncaught exception) and console.error
call, and after the load event how many images there are and which have naturalWidth 0;
Chromium's --dump-dom prints the DOM after load, and the record is read back from it.  The
network is closed (a proxy on a dead port), so a page that needs one fails here."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target; __errs.push(t && (t.src || t.href) ? 'failed to load ' + (t.src || t.href) : String(e.message));
}, true);
var __ce = console.error; console.error = function () { __errs.push('console.error: ' + [].join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var bad = [].filter.call(document.images, function (i) { return !(i.complete && i.naturalWidth > 0); })
              .map(function (i) { return i.getAttribute('src'); });
  var d = document.createElement('pre'); d.id = 'hemorrhage-probe';
  d.textContent = JSON.stringify({images: document.images.length, broken: bad, errors: __errs});
  document.body.appendChild(d);
});
</script>"""
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--proxy-server=127.0.0.1:9",
    "--allow-file-access-from-files",
    "--virtual-time-budget=10000",
]


def browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def probe(page: Path, screenshot: Path, exe: str) -> dict:
    """{"images": n, "broken": [src...], "errors": [...]} of `page`; writes `screenshot`."""
    page = Path(page).resolve()
    probed = page.with_name(".probe-" + page.name)
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        dom = subprocess.run(
            [exe, *FLAGS, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120
        ).stdout
    finally:
        probed.unlink()
    subprocess.run(
        [exe, *FLAGS, "--window-size=1200,2400", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=screenshot.parent,
    )
    m = re.search(r'<pre id="hemorrhage-probe">(.*?)</pre>', dom, re.S)
    return (
        json.loads(html.unescape(m.group(1)))
        if m
        else {"images": -1, "broken": [], "errors": ["no probe: " + dom[-500:]]}
    )
