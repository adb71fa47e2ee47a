"""Open a study's report.html in a real headless browser (Debian's chromium), check that every embedded figure
decoded (naturalWidth > 0), and save full-page screenshots to look at.

    python scripts/check_report_browser.py STUDY_FOLDER/report.html [--out screenshots/] [--browser chromium]

Exit status 0 when every <img> loaded, 1 otherwise (or when no browser is found: apt-get install chromium).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: appended to a copy of the report: after load, writes "<loaded>/<total>" images into the DOM for --dump-dom
_PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var p = document.createElement('pre'); p.id = 'image-probe';
  p.textContent = 'IMAGES ' + ok + '/' + imgs.length + ' HEIGHT ' + document.body.scrollHeight;
  document.body.appendChild(p);
});</script></body>"""


def _browser(name: str | None) -> str:
    for candidate in ([name] if name else ["chromium", "chromium-browser", "google-chrome"]):
        found = shutil.which(candidate)
        if found:
            return found
    sys.exit("no chromium found: apt-get update && apt-get install -y chromium")


def _run(browser: str, *args: str) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def check(report: Path, out: Path, browser: str, width: int = 1400) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "report_probe.html"
        probe.write_text(report.read_text().replace("</body>", _PROBE))
        dom = _run(browser, "--dump-dom", probe.as_uri())
    m = re.search(r"IMAGES (\d+)/(\d+) HEIGHT (\d+)", dom)
    if not m:
        print(f"{report}: the browser did not render the page")
        return False
    loaded, total, height = (int(g) for g in m.groups())
    out.mkdir(parents=True, exist_ok=True)
    # one tall screenshot of the whole page, then the same page cut into screen-sized pieces to read
    shot = out / "report_full.png"
    _run(browser, f"--window-size={width},{height + 40}", f"--screenshot={shot}", report.resolve().as_uri())
    print(f"{report}: {loaded}/{total} figures rendered; page {width}x{height}px; screenshot {shot}")
    return total > 0 and loaded == total and shot.is_file()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("--out", type=Path, default=Path("report_screenshots"))
    p.add_argument("--browser", help="browser executable (default: chromium)")
    a = p.parse_args()
    return 0 if check(a.report, a.out, _browser(a.browser)) else 1


if __name__ == "__main__":
    sys.exit(main())
