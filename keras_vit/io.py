"""Atomic writes, the library's one owner of them: build under a temporary name beside the destination,
rename only on success.

A failed or interrupted write leaves nothing at the output path, and an existing output there is
replaced only once the new one is complete (for exports: and verified). A directory (a SavedModel) is
built beside the destination and swapped in. Used by the exporters (:func:`atomic_output`) and by
training (:func:`atomic_write_json`, :func:`atomic_save_model`: history files and checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from keras_vit.errors import UserInputError


def check_output_folder(path: str | os.PathLike) -> Path:
    """Fail early, with a clear message, when ``path``'s folder does not exist or is not writable."""
    path = Path(path).expanduser().absolute()
    folder = path.parent
    if not folder.exists():
        raise UserInputError(f"output folder {folder} does not exist: create it or pass another --output.")
    if not folder.is_dir():
        raise UserInputError(f"output folder {folder} is not a folder: pass another --output.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserInputError(
            f"output folder {folder} is not writable ({reason}): pass another --output."
        ) from None
    os.close(fd)
    os.unlink(probe)
    if path.is_dir() and not path.is_symlink() and not _looks_like_saved_model(path) and any(path.iterdir()):
        raise UserInputError(
            f"output path {path} is a non-empty folder that is not a SavedModel: refusing to replace it."
        )
    return path


def _looks_like_saved_model(path: Path) -> bool:
    return (path / "saved_model.pb").is_file()


def temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh, unused name in ``path``'s folder (hidden, marked ``.tmp``)."""
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}{suffix}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write the output to; move it to ``path`` when the block succeeds.

    On any exception (``KeyboardInterrupt`` included) the temporary output is deleted and ``path`` is
    left as it was. For files the final step is one ``os.replace``; for directories the old directory
    (if any) is renamed aside, the new one renamed in, and the old one removed.
    """
    path = Path(path).expanduser().absolute()
    temporary = temporary_sibling(path, suffix="" if directory else path.suffix)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"the export did not write {temporary}")
        if directory:
            _swap_directory(temporary, path)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _swap_directory(new: Path, path: Path) -> None:
    if not path.exists():
        os.replace(new, path)
        return
    old = temporary_sibling(path, suffix=".old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # put the previous output back
        raise
    _remove(old)


def atomic_write_json(data: Any, path: str | os.PathLike) -> None:
    """Write ``data`` as JSON (indented, newline-terminated) to ``path`` through a temporary file beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")


def atomic_save_model(model, path: str | os.PathLike, publish: bool = True) -> None:
    """``model.save(path)`` through a temporary ``.keras`` file in the same folder (never half-written).

    With ``publish=False`` the model is saved to a scratch file that is then deleted. The non-chief
    processes of a multi-host JAX run do that whenever the chief saves: Keras' ``save`` creates
    variables under the active ``keras.distribution``, which runs collectives across processes, so a
    save made by the chief alone waits forever for the others.
    """
    path = Path(path)
    if not publish:
        with tempfile.TemporaryDirectory(prefix="keras_vit_discard_") as scratch:
            model.save(os.path.join(scratch, path.name))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        model.save(str(temporary))
