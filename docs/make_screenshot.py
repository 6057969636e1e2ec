"""Regenerate docs/status-page.png, the status page the README shows: runs `syncd demo`
(with the server it would pick: $SYNCD_POSTGRES__DSN, the local one, else a private
cluster), lets it stream and verify for a while, photographs the page with headless
Chromium, then stops the demo (which removes everything it made).

    python docs/make_screenshot.py [--wait 150] [--out docs/status-page.png] [syncd demo options...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wait", type=float, default=150, help="seconds to let the demo run first (default 150)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    ap.add_argument("--size", default="1280,2000", help="browser window WIDTH,HEIGHT (default 1280,2000)")
    args, demo_args = ap.parse_known_args()  # the rest goes to `syncd demo`, e.g. --local-server URL
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        sys.exit("make_screenshot: needs Chromium (apt-get install -y chromium)")
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "syncd", "demo", "--listen", f"127.0.0.1:{port}", *demo_args],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in demo.stdout:
            print(line, end="")
            if re.search(r"status page: http://", line):
                break
        else:
            sys.exit("make_screenshot: syncd demo stopped before serving its page")
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            time.sleep(5)
            with urllib.request.urlopen(url + "status", timeout=10) as r:
                states = {s["health"] for s in json.loads(r.read())["sources"].values()}
            print(f"make_screenshot: {deadline - time.monotonic():.0f} s to go; sources {sorted(states)}")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}",
                            f"--screenshot={args.out}", url], check=True, capture_output=True, timeout=120)
        print(f"make_screenshot: wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    finally:
        demo.send_signal(signal.SIGINT)
        for line in demo.stdout:
            print(line, end="")
        demo.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
