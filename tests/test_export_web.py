"""``--format web``: the site, the page's preprocessing and onnxruntime-web in Node, the page in headless Chromium.

Everything is compared with ``export/infer.py`` (numpy + onnxruntime in Python). Node, the page's
``npm ci`` (export/web/node_modules), Playwright and Debian's ``chromium`` are required: a missing one
fails these tests, it does not skip them (``.ci/run`` installs them).
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, load_mnist_arrays

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from keras_vit.cli.main import main  # noqa: E402
from keras_vit.errors import UserInputError  # noqa: E402
from keras_vit.export import ExportOptions, export, read_metadata, to_onnx, web  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports run on TensorFlow")


def _load_infer():
    """The repository's export/infer.py, by path (as tests/test_edge_runtime.py loads it)."""
    spec = importlib.util.spec_from_file_location("edge_infer_for_web", REPO_ROOT / "export" / "infer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


infer = _load_infer()
Classifier, InputSpec, preprocess_image = infer.Classifier, infer.InputSpec, infer.preprocess_image

WEB_TESTS = REPO_ROOT / "tests" / "web"
MNIST = {"image_size": [28, 28], "channels": 1, "input_dtype": "float32",
         "preprocessing": {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}}
MNIST_SPEC = InputSpec(28, 28, 1, "float32", 1 / 255, (0.1307,), (0.3081,))
IMAGENET = {"image_size": [32, 24], "channels": 3, "input_dtype": "float32",
            "preprocessing": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
IMAGENET_SPEC = InputSpec(32, 24, 3, "float32", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RAW = {"image_size": [28, 28], "channels": 1, "input_dtype": "uint8", "preprocessing": {}}
RAW_SPEC = InputSpec(28, 28, 1, "uint8", None)
#: Strokes (canvas pixels of the 280x280 pad) drawing digits the way a person would, and the digit each is.
#: The fixture's vit_mnist (about 80 % accurate) reads these four right whether trained on real MNIST or
#: on the packaged sample (checked with both); it misreads our drawn 7 (a bar and a slanted stroke) as 2 or 3.
DRAWN_DIGITS = {
    "1": [[(140, 50), (140, 230)]],
    "3": [[(90, 60), (180, 60), (190, 95), (140, 135), (190, 175), (180, 225), (90, 225)]],
    "0": [[(140, 50), (90, 80), (80, 140), (95, 205), (140, 230), (185, 205), (200, 140), (190, 80), (140, 50)]],
    "4": [[(170, 50), (90, 165), (205, 165)], [(175, 110), (175, 235)]],
}


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("Node.js (`node`) is needed for the web export tests: install Node 20 or later.")
    if not (web.PAGE_DIR / "node_modules" / "onnxruntime-web").is_dir():
        pytest.fail(f"onnxruntime-web is not installed: run `npm ci` in {web.PAGE_DIR}.")
    return found


def run_node(node: str, script: str, job) -> dict | list:
    result = subprocess.run([node, str(WEB_TESTS / script), str(job)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------------
# The page's preprocessing module against export/infer.py (no model needed)


def test_page_preprocessing_gives_infer_py_tensor(node, tmp_path):
    """preprocess.js on an image's RGBA pixels == infer.py's preprocess_image on the same Pillow image.

    Exact (to float32 rounding) for images at the model size and for square resizes (the drawing pad);
    for other resizes within one raw level per pixel: Pillow 13 orders its two resampling passes by a
    rule the page does not copy (horizontal first, as Pillow <= 12), which moves some pixels by 1.
    """
    rng = np.random.default_rng(0)
    cases = [  # (pixels, Pillow mode, metadata, infer.py spec, exact?)
        (rng.integers(0, 256, (28, 28), dtype=np.uint8), "L", MNIST, MNIST_SPEC, True),
        (rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB", MNIST, MNIST_SPEC, True),
        (rng.integers(0, 256, (280, 280, 3), dtype=np.uint8), "RGB", MNIST, MNIST_SPEC, True),
        (rng.integers(0, 256, (280, 280, 4), dtype=np.uint8), "RGBA", MNIST, MNIST_SPEC, True),
        (rng.integers(0, 256, (32, 24, 3), dtype=np.uint8), "RGB", IMAGENET, IMAGENET_SPEC, True),
        (rng.integers(0, 256, (70, 45, 3), dtype=np.uint8), "RGB", IMAGENET, IMAGENET_SPEC, False),
        (rng.integers(0, 256, (17, 13), dtype=np.uint8), "L", IMAGENET, IMAGENET_SPEC, False),
        (rng.integers(0, 256, (100, 61, 3), dtype=np.uint8), "RGB", MNIST, MNIST_SPEC, False),
        (rng.integers(0, 256, (56, 56, 3), dtype=np.uint8), "RGB", RAW, RAW_SPEC, True),
    ]
    job, expected = [], []
    for pixels, mode, metadata, spec, _ in cases:
        image = Image.fromarray(pixels, mode)
        rgba = np.asarray(image.convert("RGBA"))
        job.append({"rgba": rgba.ravel().tolist(), "width": image.width, "height": image.height, "metadata": metadata})
        expected.append(preprocess_image(image, spec))
    (tmp_path / "cases.json").write_text(json.dumps(job))
    results = run_node(node, "preprocess_cases.mjs", tmp_path / "cases.json")
    for (_, mode, metadata, spec, exact), want, got in zip(cases, expected, results, strict=True):
        assert got["dims"] == [1, *spec.shape]
        assert got["type"] == spec.dtype
        tensor = np.asarray(got["data"], dtype=np.float64).reshape(spec.shape)
        diff = np.abs(tensor - want.astype(np.float64))
        if exact:
            assert diff.max() == 0.0, (mode, metadata["image_size"], diff.max())
        else:
            one_level = (spec.scale or 1.0) / min(spec.std)
            assert diff.max() <= one_level * 1.0001, (mode, diff.max())


# --------------------------------------------------------------------------------------------------
# Errors before any work


@pytest.fixture
def model_path(tmp_path) -> Path:
    """A path that passes the .keras name check; these errors come before the model is read."""
    path = tmp_path / "model.keras"
    path.write_bytes(b"")
    return path


def test_missing_runtime_is_one_clear_error(model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(web.RUNTIME_ENV, str(tmp_path / "nowhere"))
    code = main(["export", str(model_path), "--format", "web", "--output", str(tmp_path / "site")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "onnxruntime-web 1.30.0 not found" in err and "npm ci" in err
    assert not (tmp_path / "site").exists()


def test_missing_page_source_is_one_clear_error(model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(web, "PAGE_DIR", tmp_path / "wheel" / "export" / "web")
    code = main(["export", str(model_path), "--format", "web", "--output", str(tmp_path / "site")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "the web page's source is not found" in err
    assert not (tmp_path / "site").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_site(model_path, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.jpg").write_bytes(b"x")
    code = main(["export", str(model_path), "--format", "web", "--output", str(folder)])
    assert code == 2
    assert "not a keras-vit web export" in capsys.readouterr().err
    assert (folder / "keep.jpg").read_bytes() == b"x"


def test_web_options_are_checked():
    with pytest.raises(UserInputError, match="unknown quantization .fp16. for --format web: choose one of int8"):
        ExportOptions(format="web", quantize="fp16").checked()
    with pytest.raises(UserInputError, match="--portable"):
        ExportOptions(format="web", portable=True).checked()


# --------------------------------------------------------------------------------------------------
# The exported site of a trained vit_mnist (slow: the trained fixture)


@pytest.fixture(scope="module")
def exported(trained_mnist_model, tmp_path_factory, node):
    """The site (--optimize), an INT8 site through the CLI, and a plain ONNX file, of one trained vit_mnist."""
    folder = tmp_path_factory.mktemp("web")
    report = export(trained_mnist_model, folder / "site", ExportOptions(format="web", optimize=True))
    code = main(["export", str(trained_mnist_model), "--format", "web", "--quantize", "int8",
                 "--output", str(folder / "site_int8")])
    assert code == 0
    to_onnx(trained_mnist_model, folder / "plain.onnx")
    return {"report": report, "site": folder / "site", "int8": folder / "site_int8", "plain": folder / "plain.onnx",
            "folder": folder}


def test_site_has_the_page_the_model_and_one_wasm_runtime(exported):
    site, report = exported["site"], exported["report"]
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert files == sorted([*web.PAGE_FILES, "model.json", "model.onnx", *(f"ort/{n}" for n in web.RUNTIME_FILES)])
    assert not [p for p in site.parent.iterdir() if ".tmp-" in p.name]
    description = json.loads((site / "model.json").read_text())
    metadata = read_metadata(site / "model.onnx")
    for key in ("class_names", "image_size", "channels", "preprocessing", "input_dtype"):
        assert description[key] == metadata[key]
    assert description["onnxruntime_web"] == "1.30.0" and description["model"] == "model.onnx"
    assert report.format == "web" and report.path == str(site)
    assert report.file_size == sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert report.parity["max_abs_diff"] <= 1e-4 and report.optimization["kept"] in ("optimized", "plain")
    assert json.loads((exported["int8"] / "model.json").read_text())["quantize"] == "int8"


def test_site_export_replaces_a_previous_site(exported, trained_mnist_model):
    (exported["int8"] / "stale.txt").write_text("from an earlier export")
    export(trained_mnist_model, exported["int8"], ExportOptions(format="web", quantize="int8"))
    assert not (exported["int8"] / "stale.txt").exists()
    assert json.loads((exported["int8"] / "model.json").read_text())["quantize"] == "int8"
    assert not [p for p in exported["folder"].iterdir() if ".tmp-" in p.name]


def mnist_feed(count: int) -> np.ndarray:
    _, (x_test, _) = load_mnist_arrays()
    raw = x_test[:count, ..., None].astype(np.float32)
    return ((raw * np.float32(1 / 255) - np.float32(0.1307)) / np.float32(0.3081)).astype(np.float32)


def test_onnxruntime_web_in_node_matches_onnxruntime(exported, node, tmp_path):
    """Plain, optimized (contrib ops) and INT8 files: onnxruntime-web's WASM in Node vs onnxruntime in Python.

    Float files within 1e-4. The INT8 file quantises activations at run time, and the WASM kernels round
    apart from the native ones (0.044 max abs logit diff on 256 MNIST digits, measured with a vit_mnist
    like this one): bounded by the file's own quantisation error (native INT8 vs native float, 0.17 there),
    with the same top-1.
    """
    feed = mnist_feed(32)
    feed.tofile(tmp_path / "input.bin")
    models = {"plain": exported["plain"], "optimized": exported["site"] / "model.onnx",
              "int8": exported["int8"] / "model.onnx"}
    job = {"input": str(tmp_path / "input.bin"), "dims": list(feed.shape), "type": "float32",
           "models": [str(p) for p in models.values()]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = run_node(node, "ort_parity.mjs", tmp_path / "job.json")
    assert out["version"] == "1.30.0"
    native = {}
    for name, path in models.items():
        native[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            ["logits"], {"images": feed})[0]
        got = np.asarray(out["results"][str(path)]["data"], dtype=np.float32).reshape(native[name].shape)
        diff = float(np.abs(got - native[name]).max())
        if name == "int8":
            assert diff <= float(np.abs(native["int8"] - native["plain"]).max()), diff
        else:
            assert diff <= 1e-4, (name, diff)
        assert (got.argmax(-1) == native[name].argmax(-1)).all(), name


# --------------------------------------------------------------------------------------------------
# The page in a real headless Chromium


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(exported):
    """A local static server over the export folder (the site and the test images beside it)."""
    folder = exported["folder"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chromium():
    """Playwright (one per module: its sync API runs once per thread) and Debian's chromium executable."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is needed for the browser test: pip install playwright (its browser download is "
                    "not needed: the test drives Debian's chromium).")
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is needed for the browser test: apt-get install chromium (or set $CHROMIUM).")
    with sync_playwright() as playwright:
        yield functools.partial(playwright.chromium.launch, executable_path=executable)


@pytest.fixture(scope="module")
def browser(chromium):
    launched = chromium(args=["--no-sandbox"])
    yield launched
    launched.close()


def open_page(browser, url: str):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-state=done], body[data-state=error], body[data-state=ready]", timeout=60_000)
    if "image=" in url:
        page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=60_000)
    return page


def test_page_classifies_images_like_infer_py(exported, served, browser):
    """?image=URL for real MNIST test digits (PNG, at the model size) and a larger RGB one: top-1 and top-k
    probabilities as export/infer.py gives them for the same file."""
    images = exported["folder"] / "images"
    images.mkdir(exist_ok=True)
    _, (x_test, _) = load_mnist_arrays()
    names = []
    for i in range(6):
        Image.fromarray(x_test[i], "L").save(images / f"digit{i}.png")
        names.append(f"digit{i}.png")
    big = Image.fromarray(x_test[7], "L").convert("RGB").resize((84, 84), Image.Resampling.NEAREST)
    big.save(images / "digit7_rgb_84.png")
    names.append("digit7_rgb_84.png")
    classifier = Classifier(exported["site"] / "model.onnx", threads=1)
    for name in names:
        (want,) = classifier.classify_paths([str(images / name)], top_k=5)
        page = open_page(browser, f"{served}/site/index.html?image=../images/{name}")
        assert page.text_content("#error") == "", name
        assert page.text_content("#prediction") == want.top_k[0].label, name
        top = json.loads(page.get_attribute("#prediction", "data-top-k"))
        assert [t["label"] for t in top] == [t.label for t in want.top_k]
        assert np.allclose([t["probability"] for t in top], [t.probability for t in want.top_k], atol=1e-5)
        assert float(page.get_attribute("#prediction", "data-latency-ms")) > 0
        page.close()


def test_page_shows_errors(exported, served, browser):
    page = open_page(browser, f"{served}/site/index.html?image=../images/missing.png")
    assert "HTTP 404" in page.text_content("#error") and page.text_content("#prediction") == ""
    page.close()
    (exported["folder"] / "images").mkdir(exist_ok=True)
    (exported["folder"] / "images" / "broken.png").write_bytes(b"not an image")
    page = open_page(browser, f"{served}/site/index.html?image=../images/broken.png")
    assert "not a readable image" in page.text_content("#error")
    page.close()
    no_model = exported["folder"] / "no_model"
    shutil.copytree(exported["site"], no_model, dirs_exist_ok=True)
    (no_model / "model.onnx").unlink()
    page = open_page(browser, f"{served}/no_model/index.html")
    assert "cannot fetch the model model.onnx: HTTP 404" in page.text_content("#error")
    page.close()


def test_drawn_digits_are_classified(exported, served, browser, tmp_path):
    """Digits drawn on the canvas with mouse events: the page's label is the digit drawn, and export/infer.py
    gives the same label for the canvas' pixels (saved as PNG)."""
    classifier = Classifier(exported["site"] / "model.onnx", threads=1)
    for digit, strokes in DRAWN_DIGITS.items():
        page = open_page(browser, f"{served}/site/index.html")
        box = page.locator("#pad").bounding_box()
        for stroke in strokes:
            page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
            page.mouse.up()
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
        assert page.text_content("#prediction") == digit
        data_url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
        png = tmp_path / f"drawn_{digit}.png"
        Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).save(png)
        (want,) = classifier.classify_paths([str(png)], top_k=1)
        assert want.top_k[0].label == digit
        page.close()


# --------------------------------------------------------------------------------------------------
# --webgpu: onnxruntime-web's WebGPU build beside the WASM one (float models only)

#: Chromium flags giving headless Chromium a WebGPU adapter without a GPU (SwiftShader, a CPU Vulkan).
WEBGPU_ARGS = ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader",
               "--enable-unsafe-swiftshader"]
#: Max abs difference of top-k probabilities, WebGPU page vs export/infer.py (onnxruntime CPU): 3.9e-08 measured
#: on SwiftShader for a vit_mnist (logits 1.2e-06 from WASM); real GPUs round differently, hence the margin.
WEBGPU_PROBABILITY_TOLERANCE = 1e-4


def test_webgpu_option_is_checked(model_path, tmp_path, capsys):
    with pytest.raises(UserInputError, match="--webgpu applies to --format web only"):
        ExportOptions(format="onnx", webgpu=True).checked()
    assert ExportOptions(format="web", webgpu=True, optimize=True).checked().webgpu
    code = main(["export", str(model_path), "--format", "web", "--quantize", "int8", "--webgpu",
                 "--output", str(tmp_path / "site")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--webgpu applies to float models only" in err and "--quantize int8" in err
    assert not (tmp_path / "site").exists()


@pytest.fixture(scope="module")
def webgpu_site(exported, trained_mnist_model):
    """The --optimize site of the same vit_mnist exported with --webgpu (beside the others, so `served` serves it)."""
    site = exported["folder"] / "site_webgpu"
    report = export(trained_mnist_model, site, ExportOptions(format="web", optimize=True, webgpu=True))
    return {"site": site, "report": report}


@pytest.fixture(scope="module")
def webgpu_browser(chromium):
    launched = chromium(args=WEBGPU_ARGS)
    yield launched
    launched.close()


def test_webgpu_site_adds_the_webgpu_build(exported, webgpu_site):
    site = webgpu_site["site"]
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    runtime = [*web.RUNTIME_FILES, *web.WEBGPU_FILES]
    assert files == sorted([*web.PAGE_FILES, "model.json", "model.onnx", *(f"ort/{n}" for n in runtime)])
    assert json.loads((site / "model.json").read_text())["webgpu"] is True
    assert json.loads((exported["site"] / "model.json").read_text())["webgpu"] is False
    assert webgpu_site["report"].file_size == web.site_size(site)


def test_page_on_webgpu_matches_infer_py(exported, webgpu_site, served, webgpu_browser):
    """?ep=webgpu (SwiftShader's WebGPU): the same top-1 as export/infer.py, top-k probabilities within
    WEBGPU_PROBABILITY_TOLERANCE; the latency line names the backend."""
    images = exported["folder"] / "images"
    images.mkdir(exist_ok=True)
    _, (x_test, _) = load_mnist_arrays()
    classifier = Classifier(webgpu_site["site"] / "model.onnx", threads=1)
    diffs = []
    for i in range(4):
        Image.fromarray(x_test[i], "L").save(images / f"webgpu{i}.png")
        (want,) = classifier.classify_paths([str(images / f"webgpu{i}.png")], top_k=5)
        page = open_page(webgpu_browser, f"{served}/site_webgpu/index.html?image=../images/webgpu{i}.png&ep=webgpu")
        assert page.text_content("#error") == "", i
        assert page.get_attribute("#prediction", "data-backend") == "webgpu"
        assert "WebGPU" in page.text_content("#latency") and "WebGPU" in page.text_content("#model-info")
        assert page.text_content("#prediction") == want.top_k[0].label, i
        top = {t["label"]: t["probability"] for t in json.loads(page.get_attribute("#prediction", "data-top-k"))}
        diffs += [abs(top[t.label] - t.probability) for t in want.top_k if t.label in top]
        page.close()
    print(f"WebGPU vs onnxruntime CPU: max abs top-k probability diff {max(diffs):.2e}")
    assert max(diffs) <= WEBGPU_PROBABILITY_TOLERANCE
    page = open_page(webgpu_browser, f"{served}/site_webgpu/index.html?image=../images/webgpu0.png")
    assert page.get_attribute("#prediction", "data-backend") == "wasm" and "WASM" in page.text_content("#latency")
    assert page.is_visible("#backend")  # the choice is offered, WASM by default
    assert page.input_value("#backend") == "wasm"
    page.close()


def test_webgpu_asked_where_unavailable_is_an_error(exported, served, webgpu_browser):
    page = open_page(webgpu_browser, f"{served}/site/index.html?image=../images/webgpu0.png&ep=webgpu")
    assert "exported without --webgpu" in page.text_content("#error") and page.text_content("#prediction") == ""
    assert not page.is_visible("#backend")
    page.close()
