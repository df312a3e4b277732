"""Render a report in headless Chromium: count the images that failed to load and take a screenshot.

`python -m relscope.reports.render report.html [screenshot.png]` exits non-zero when an image is broken or the
screenshot is blank; `make demo` runs it on the study report.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from relscope.errors import RelscopeError

# Runs after every image has loaded or failed (the load event waits for both); writes the counts into the DOM.
PROBE = ("<script>window.addEventListener('load',()=>{const all=[...document.images];"
         "const broken=all.filter(i=>!(i.complete&&i.naturalWidth>0)).length;"
         "document.body.setAttribute('data-images',all.length);document.body.setAttribute('data-broken',broken);"
         "});</script>")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=15000")


@dataclass(frozen=True)
class Rendering:
    images: int
    broken: int
    screenshot: Path
    blank: bool

    @property
    def ok(self) -> bool:
        """Whether the report rendered whole: it has images, none broken, and the screenshot is not blank."""
        return self.images > 0 and self.broken == 0 and not self.blank


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) on PATH, or None."""
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)


def render(html: str | Path, screenshot: str | Path, width: int = 1280, height: int = 6000) -> Rendering:
    """Open `html` in headless Chromium: count its images that failed to load and save a screenshot to check."""
    chromium = find_chromium()
    if chromium is None:
        raise RelscopeError("headless Chromium not found; install Debian's chromium package (make install does)")
    html, screenshot = Path(html).resolve(), Path(screenshot).resolve()
    with tempfile.TemporaryDirectory() as tmp:  # the probe goes into a copy: the report itself stays script-free
        probed = Path(tmp) / html.name
        probed.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
        dom = _chromium(chromium, "--dump-dom", probed.as_uri(), tmp=tmp)
        _chromium(chromium, f"--screenshot={screenshot}", f"--window-size={width},{height}", html.as_uri(), tmp=tmp)
    found = re.search(r'data-images="(\d+)" data-broken="(\d+)"', dom)
    if not found:
        raise RelscopeError(f"{html}: Chromium rendered no <body> to count images in")
    return Rendering(int(found[1]), int(found[2]), screenshot, _blank(screenshot))


def _chromium(chromium: str, *args: str, tmp: str) -> str:
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp}/profile", *args], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RelscopeError(f"chromium exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def _blank(png: Path) -> bool:
    """A screenshot of one colour: nothing was drawn."""
    from matplotlib.image import imread

    pixels = imread(png)
    return bool(pixels[..., :3].std() < 1e-3)


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when the report renders whole, 1 when not, 2 on bad usage."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m relscope.reports.render REPORT.html [SCREENSHOT.png]", file=sys.stderr)
        return 2
    html = Path(args[0])
    result = render(html, args[1] if len(args) > 1 else html.with_name("report-screenshot.png"))
    print(f"{html}: {result.images} images, {result.broken} broken; screenshot {result.screenshot}"
          f"{' (BLANK)' if result.blank else ''}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
