"""Renders a pathrt report (report.html or evaluation.html-like page) in headless Chromium and writes
screen-sized PNG tiles, to look at the report as a reader sees it.

    apt-get install chromium   # Debian's package
    .venv/bin/python docs/experiments/report_screenshot.py runs/demo/report/report.html --out runs/demo/shots

Writes page-01.png, page-02.png, ... (1100 px wide, 1400 px tall each) and prints their paths.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

WIDTH, TILE = 1100, 1400


def screenshot(page: Path, out: Path, height: int = 20000) -> list[Path]:
    """Full-page screenshot of `page` cut into tiles; blank space below the content is dropped."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--window-size={WIDTH},{height}",
                        f"--screenshot={full}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        image = Image.open(full).convert("RGB")
        box = Image.eval(image, lambda v: 255 - v).getbbox()  # the non-white part
        bottom = box[3] + 20 if box else image.height
        tiles = []
        for i, top in enumerate(range(0, bottom, TILE)):
            path = out / f"page-{i + 1:02d}.png"
            image.crop((0, top, WIDTH, min(top + TILE, bottom))).save(path)
            tiles.append(path)
    return tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/report-shots"))
    for path in screenshot(parser.parse_args().page, parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
