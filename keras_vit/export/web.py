"""``export_web``: a Keras ViT as a static web site that classifies images in the browser (onnxruntime-web).

The site is the ONNX pipeline's verified file (:func:`~keras_vit.export.onnx.export_onnx`: ``--optimize`` and
``--quantize int8`` apply) plus the page from the repository's ``export/web/`` folder and onnxruntime-web's
WASM build, pinned by ``export/web/package.json``::

    SITE/index.html, style.css, app.js, preprocess.js   the page (plain HTML, CSS, JavaScript modules)
    SITE/model.onnx                                      the verified model, with its keras-vit metadata
    SITE/model.json                                      labels, input size, preprocessing (from that metadata)
    SITE/ort/ort.wasm.min.mjs, ort-wasm-simd-threaded.{mjs,wasm}   onnxruntime-web, WASM
    SITE/ort/ort.webgpu.min.mjs, ort-wasm-simd-threaded.asyncify.{mjs,wasm}   with ``--webgpu``: its WebGPU build

It runs offline from any static server (``python -m http.server -d SITE``): one WASM thread, so no
cross-origin isolation headers are needed. Neither the page nor onnxruntime-web's files (14 MB of WASM)
are in the Python package, so ``--format web`` runs from a clone (``pip install -e .``): the runtime comes
from ``export/web/node_modules`` after ``npm ci`` there, or from the folder named by ``$KERAS_VIT_ORT_WEB``
(an ``onnxruntime-web/dist`` of the pinned version); either missing is one clear error. The whole site is built in a
temporary folder beside the output and renamed into place (:func:`keras_vit.io.atomic_output`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from keras_vit.errors import UserInputError
from keras_vit.export.onnx import export_onnx
from keras_vit.export.options import ExportOptions
from keras_vit.export.report import ExportReport, read_metadata
from keras_vit.export.source import check_model_path, default_output
from keras_vit.io import atomic_output, check_output_folder

#: The page's source folder (the repository's ``export/web``).
PAGE_DIR = Path(__file__).resolve().parents[2] / "export" / "web"
#: The page's files, copied as they are.
PAGE_FILES = ("index.html", "style.css", "app.js", "preprocess.js")
#: onnxruntime-web's files the page loads: the WASM-only bundle, its loader and the one WASM binary.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: With ``--webgpu``: the WebGPU bundle and the files it loads (onnxruntime-web 1.30 loads the asyncify build).
WEBGPU_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
#: The environment variable naming another ``onnxruntime-web/dist`` folder.
RUNTIME_ENV = "KERAS_VIT_ORT_WEB"
#: The file that marks a folder as a site written here (so that an export may replace it).
SITE_FILE = "model.json"
MODEL_FILE = "model.onnx"


def pinned_runtime_version(page_dir: Path | None = None) -> str:
    """The onnxruntime-web version ``export/web/package.json`` pins (a clear error without the page's source)."""
    page_dir = PAGE_DIR if page_dir is None else page_dir
    missing = [name for name in (*PAGE_FILES, "package.json") if not (page_dir / name).is_file()]
    if missing:
        raise UserInputError(
            f"the web page's source is not found ({page_dir} lacks {missing[0]}): --format web builds the site "
            "from export/web of a keras-vit clone (pip install -e .), which a wheel does not hold."
        )
    package = json.loads((page_dir / "package.json").read_text(encoding="utf-8"))
    return package["dependencies"]["onnxruntime-web"]


def find_runtime(page_dir: Path | None = None, webgpu: bool = False) -> Path:
    """The folder holding :data:`RUNTIME_FILES` (and :data:`WEBGPU_FILES`) of the pinned onnxruntime-web.

    A clear :class:`UserInputError` when it lacks one.
    """
    page_dir = PAGE_DIR if page_dir is None else page_dir
    version = pinned_runtime_version(page_dir)
    override = os.environ.get(RUNTIME_ENV)
    dist = Path(override).expanduser() if override else page_dir / "node_modules" / "onnxruntime-web" / "dist"
    missing = [name for name in runtime_files(webgpu) if not (dist / name).is_file()]
    if missing:
        where = f"${RUNTIME_ENV}={override}" if override else str(dist)
        raise UserInputError(
            f"onnxruntime-web {version} not found ({where} lacks {missing[0]}): run `npm ci` in {page_dir} "
            f"(Node.js), or set {RUNTIME_ENV} to the dist folder of onnxruntime-web {version}."
        )
    package = dist.parent / "package.json"
    if package.is_file():
        found = json.loads(package.read_text(encoding="utf-8")).get("version")
        if found != version:
            raise UserInputError(
                f"{dist} is onnxruntime-web {found}, the page is tested with {version}: run `npm ci` in {page_dir}."
            )
    return dist


def runtime_files(webgpu: bool) -> tuple[str, ...]:
    """onnxruntime-web's files a site holds."""
    return RUNTIME_FILES + (WEBGPU_FILES if webgpu else ())


def check_site_output(path: str | os.PathLike) -> Path:
    """The site folder as an absolute path; refuses a file or a non-empty folder that is not a site written here."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserInputError(f"output path {path} is a file: --format web writes a folder.")
    if path.is_dir() and not (path / SITE_FILE).is_file() and any(path.iterdir()):
        raise UserInputError(
            f"output path {path} is a non-empty folder that is not a keras-vit web export: refusing to replace it."
        )
    check_output_folder(path.parent / f"{path.name}.site-check")  # its parent exists and is writable
    return path


def site_description(metadata: dict, quantize: str | None, runtime_version: str, webgpu: bool = False) -> dict:
    """``model.json``: what the page needs, read from the ONNX file's keras-vit metadata."""
    return {
        "model": MODEL_FILE,
        "class_names": metadata["class_names"],
        "image_size": metadata["image_size"],
        "channels": metadata["channels"],
        "preprocessing": metadata["preprocessing"],
        "input_dtype": metadata["input_dtype"],
        "outputs": metadata.get("outputs", ["logits"]),
        "preset": metadata.get("preset"),
        "quantize": quantize,
        "keras_vit_version": metadata.get("keras_vit_version"),
        "onnxruntime_web": runtime_version,
        "webgpu": webgpu,
    }


def site_size(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def export_web(model_or_path, path: str | os.PathLike | None, options: ExportOptions) -> ExportReport:
    """Export ``model_or_path`` as a static site at ``path`` (default ``MODEL_web`` beside a ``.keras`` path).

    The model file is verified as ``--format onnx`` verifies it (the same options; ``format`` aside); the
    report is the ONNX report with ``format="web"``, the site's path and its total size.
    """
    start = time.perf_counter()
    options = options.checked()
    check_model_path(model_or_path)
    output = check_site_output(path if path is not None else default_output(model_or_path, "web"))
    runtime = find_runtime(webgpu=options.webgpu)
    version = pinned_runtime_version()
    with atomic_output(output, directory=True) as temporary:
        temporary.mkdir()
        onnx_options = dataclasses.replace(options, format="onnx", webgpu=False)
        report = export_onnx(model_or_path, temporary / MODEL_FILE, onnx_options)
        description = site_description(read_metadata(temporary / MODEL_FILE), options.quantize, version,
                                       options.webgpu)
        (temporary / SITE_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        for name in PAGE_FILES:
            shutil.copyfile(PAGE_DIR / name, temporary / name)
        (temporary / "ort").mkdir()
        for name in runtime_files(options.webgpu):
            shutil.copyfile(runtime / name, temporary / "ort" / name)
        size = site_size(temporary)
    report.format = "web"
    report.path = str(output)
    report.file_size = size
    report.seconds = time.perf_counter() - start
    return report
