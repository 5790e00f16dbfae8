"""Max abs logit difference between keras-vit models loaded from checkpoints and timm, per case.

Run once per backend (the table names the backend):

    KERAS_BACKEND=tensorflow python benchmarks/weights_parity.py
    KERAS_BACKEND=jax python benchmarks/weights_parity.py
    KERAS_BACKEND=torch python benchmarks/weights_parity.py

Options: ``--vit-base`` also saves a random-weights ``vit_base_patch16_224`` (86.6 M parameters) as
``.safetensors``, times ``keras-vit convert`` on it (a fresh process, imports included) and checks the
converted model's logits; ``--finetune`` fine-tunes a converted 32x32 checkpoint on MNIST (new 10-class
head, 376 steps) and reports test accuracy, parity with timm and, when ``keras_vit.export`` is
available, with the exported ONNX file. References are timm models built with ``pretrained=False``,
seed fixed, parameters perturbed so that every tensor matters; images are random normal, 4 per case.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_vit import weights  # noqa: E402
from keras_vit.testing import (  # noqa: E402
    import_timm,
    make_timm_preset,
    make_timm_vit,
    random_images,
    save_state_dict,
    timm_logits,
    timm_state_dict,
    write_google_npz,
)

CUSTOM = dict(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, num_classes=10)
TINY2 = dict(img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3, num_classes=1000)


def _logits(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def _row(case, diff, std, note=""):
    return {"case": case, "diff": float(diff), "std": float(std), "note": note}


def parity_rows(folder: Path) -> list[dict]:
    """One row per case: max abs logit difference to timm (and the reference logits' std)."""
    import torch
    from timm.layers import resample_abs_pos_embed

    rows = []
    custom = make_timm_vit(**CUSTOM, seed=0)
    images = random_images(4, 32, seed=1)
    expected = timm_logits(custom, images)
    for name in ("custom.safetensors", "custom.pth"):
        model = weights.from_checkpoint(save_state_dict(custom, folder / name), num_heads=4)
        diff = np.abs(_logits(model, images) - expected).max()
        rows.append(_row(f"timm 32x32/p4, 3 blocks ({Path(name).suffix})", diff, expected.std()))
    for prefix in ("", "opt/target/"):
        path = write_google_npz(custom, folder / f"custom{prefix.replace('/', '_')}.npz", num_heads=4, prefix=prefix)
        model = weights.from_checkpoint(path)
        rows.append(_row(f"Google .npz 32x32/p4{' (opt/target/)' if prefix else ''}",
                         np.abs(_logits(model, images) - expected).max(), expected.std()))

    tiny2 = make_timm_vit(**TINY2, seed=1)
    images = random_images(4, 224, seed=2)
    expected = timm_logits(tiny2, images)
    model = weights.from_checkpoint(save_state_dict(tiny2, folder / "tiny2.safetensors"))
    rows.append(_row("timm ViT-Ti/16, 2 blocks", np.abs(_logits(model, images) - expected).max(), expected.std()))

    tiny = make_timm_preset("vit_tiny_patch16_224", seed=4)
    expected = timm_logits(tiny, images)
    model = weights.from_checkpoint(save_state_dict(tiny, folder / "vit_tiny.safetensors"))
    rows.append(_row("timm vit_tiny_patch16_224", np.abs(_logits(model, images) - expected).max(), expected.std()))
    model = weights.from_checkpoint(write_google_npz(tiny, folder / "vit_tiny.npz", num_heads=3))
    rows.append(_row("Google .npz vit_tiny_patch16_224", np.abs(_logits(model, images) - expected).max(),
                     expected.std()))

    state = timm_state_dict(tiny2)
    images = random_images(4, 160, seed=3)
    for antialias in (True, False):
        model, _, _ = weights.convert_checkpoint(state, image_size=160, antialias=antialias)
        resampled = resample_abs_pos_embed(torch.from_numpy(state["pos_embed"]), (10, 10), antialias=antialias)
        ours = keras.ops.convert_to_numpy(model.get_layer("patch_encoder").position_embedding)
        ref160 = make_timm_vit(**{**TINY2, "img_size": 160}, perturb=False)
        ref160.load_state_dict({**tiny2.state_dict(), "pos_embed": resampled})
        expected = timm_logits(ref160.eval(), images)
        tag = "antialias" if antialias else "no antialias"
        rows.append(_row(f"ViT-Ti/16 224->160, {tag}: pos_embed", np.abs(ours - resampled.numpy()).max(),
                         resampled.numpy().std(), "vs resample_abs_pos_embed"))
        rows.append(_row(f"ViT-Ti/16 224->160, {tag}: logits", np.abs(_logits(model, images) - expected).max(),
                         expected.std(), "vs timm at 160"))
    return rows


def vit_base_timing(folder: Path) -> list[str]:
    """Save a random vit_base_patch16_224 as safetensors, time `keras-vit convert`, check its logits."""
    ref = make_timm_preset("vit_base_patch16_224", seed=0, perturb=False)
    params = sum(p.numel() for p in ref.parameters())
    checkpoint = save_state_dict(ref, folder / "vit_base_patch16_224.safetensors")
    output = folder / "vit_base_patch16_224.keras"
    cli = [sys.executable, "-m", "keras_vit.cli.main", "convert", str(checkpoint), "-o", str(output)]
    start = time.perf_counter()
    done = subprocess.run(cli, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"convert failed: {done.stderr}")
    model = keras.saving.load_model(output)
    images = random_images(2, 224, seed=5)
    expected = timm_logits(ref, images)
    diff = np.abs(_logits(model, images) - expected).max()
    lines = [f"ViT-B/16: {params:,} parameters, checkpoint {checkpoint.stat().st_size / 2**20:.0f} MiB, "
             f".keras {output.stat().st_size / 2**20:.0f} MiB",
             f"`keras-vit convert` wall time (fresh process, imports included): {seconds:.1f} s"]
    lines += ["  " + line for line in done.stdout.strip().splitlines()]
    lines.append(f"ViT-B/16 converted logits vs timm: max abs diff {diff:.2e} (logit std {expected.std():.2f})")
    return lines


def finetune(folder: Path) -> list[str]:
    """The end-to-end check of tests/test_weights.py, with its figures."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import load_mnist_arrays

    source = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0)
    path = save_state_dict(make_timm_vit(**source, num_classes=100, seed=3), folder / "pretrained.safetensors")
    keras.utils.set_random_seed(0)
    model = weights.from_checkpoint(path, num_classes=10, num_heads=4)
    (x_train, y_train), (x_test, y_test) = load_mnist_arrays()

    def prepare(x):
        x = keras.ops.image.resize(x[..., None].astype("float32"), (32, 32), interpolation="bilinear")
        x = np.repeat(keras.ops.convert_to_numpy(x), 3, axis=-1)
        return ((x / 255.0 - 0.5) / 0.5).astype("float32")

    x, y = prepare(x_train[:12000]), y_train[:12000].astype("int32")
    xt, yt = prepare(x_test[:1000]), y_test[:1000].astype("int32")
    model.compile(optimizer=keras.optimizers.AdamW(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
    back = make_timm_vit(**source, num_classes=10, perturb=False)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in weights.to_timm_state_dict(model).items()})
    images = xt[:64]
    ours = _logits(model, images)
    diff = np.abs(ours - timm_logits(back.eval(), images)).max()
    lines = [f"fine-tune: 376 steps in {seconds:.0f} s, MNIST test accuracy {accuracy:.3f} (1,000 images)",
             f"fine-tuned vs timm with the weights written back: max abs diff {diff:.2e}"]
    try:
        from keras_vit.export import to_onnx
    except ImportError as err:
        return lines + [f"ONNX: skipped ({err})"]
    import onnxruntime as ort

    saved = folder / "finetuned.keras"
    model.save(saved)
    report = to_onnx(saved, folder / "finetuned.onnx")
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"images": images})[0]
    return lines + [f"fine-tuned vs ONNX (onnxruntime): max abs diff {np.abs(onnx_logits - ours).max():.2e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-base", action="store_true", help="also time converting a random ViT-B/16")
    parser.add_argument("--finetune", action="store_true", help="also run the MNIST fine-tuning check")
    args = parser.parse_args()
    import_timm()
    backend = keras.backend.backend()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = parity_rows(folder)
        width = max(len(r["case"]) for r in rows)
        print(f"backend: {backend} (keras {keras.__version__})")
        print(f"{'case':<{width}}  {'max abs diff':>12}  {'ref std':>7}  note")
        for r in rows:
            print(f"{r['case']:<{width}}  {r['diff']:>12.2e}  {r['std']:>7.2f}  {r['note']}")
        print(f"worst: {max(r['diff'] for r in rows):.2e} (tolerance 1e-4)")
        if args.vit_base:
            print("\n".join(vit_base_timing(folder)))
        if args.finetune:
            print("\n".join(finetune(folder)))


if __name__ == "__main__":
    main()
