"""Batch-1 latency of a ``keras-vit export --format web`` site in headless Chromium (onnxruntime-web, WASM,
1 thread) beside onnxruntime native (Python, 1 thread) on the same ``model.onnx``, and the site's size.

    python -m benchmarks.web_latency SITE [SITE ...] [--rounds 5] [--runs 200]

Each round loads the page once per site with ``?image=...&runs=N`` (the page's own timing: median of N
``session.run`` calls after 10 warm-up runs) and times onnxruntime native on the same image, interleaved,
so a busy machine slows both alike; the figures are medians over rounds. Needs Playwright and Debian's
``chromium`` (or ``$CHROMIUM``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import statistics
import tempfile
import threading
from pathlib import Path

import numpy as np


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def site_bytes(site: Path) -> int:
    return sum(p.stat().st_size for p in site.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sites", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    import onnxruntime as ort
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from export.infer import Classifier
    from keras_vit.export.optimize import time_calls

    root = Path(tempfile.mkdtemp(prefix="web_latency_"))
    for i, site in enumerate(args.sites):
        shutil.copytree(site, root / f"site{i}")
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a "1"; latency does not depend on the content
    Image.fromarray(digit, "L").save(root / "digit.png")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    natives = {}
    for i, site in enumerate(args.sites):
        classifier = Classifier(site / "model.onnx", threads=1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(site / "model.onnx"), options, providers=["CPUExecutionProvider"])
        feed = classifier.load_image(str(root / "digit.png"))[None]
        natives[i] = lambda s=session, f=feed: s.run(None, {"images": f})
    browser_ms = {i: [] for i in natives}
    native_ms = {i: [] for i in natives}
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        for _ in range(args.rounds):
            for i in natives:
                page = browser.new_page()
                page.goto(f"{base}/site{i}/index.html?image=../digit.png&runs={args.runs}")
                page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=120_000)
                error = page.text_content("#error")
                if error:
                    raise SystemExit(f"{args.sites[i]}: {error}")
                browser_ms[i].append(float(page.get_attribute("#prediction", "data-latency-ms")))
                page.close()
                native_ms[i].append(1e3 * float(np.median(time_calls(natives[i], runs=args.runs, warmup=10))))
        version = browser.version
        browser.close()
    server.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    print(f"Chromium {version}, onnxruntime {ort.__version__}; medians over {args.rounds} rounds of {args.runs} runs")
    print("| site | Chromium WASM 1 thread (ms) | onnxruntime native 1 thread (ms) | ratio | site size (MB) |")
    print("|---|---|---|---|---|")
    for i, site in enumerate(args.sites):
        b, n = statistics.median(browser_ms[i]), statistics.median(native_ms[i])
        print(f"| {site.name} | {b:.3f} | {n:.3f} | {b / n:.1f}x | {site_bytes(site) / 1e6:.2f} |")


if __name__ == "__main__":
    main()
