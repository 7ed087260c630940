"""The model directory format: ``weights.safetensors`` plus ``model.json``. Never pickle.

Loading reads JSON and safetensors only, so a model file can never run code. ``model.json``
records the format version, the checksum of the weights, and everything needed to score:
schema, preprocessing state, config, calibration, package and library versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from anomaly_vae.errors import ModelFileError

FORMAT_NAME = "anomaly-vae-model"
FORMAT_VERSION = 1
META_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
# A model.json over this is refused before it is read: a real one holds some thousand
# calibration scores and the preprocessing state (kilobytes to a few megabytes), and one padded
# to gigabytes took all the memory of whatever loaded the directory.
MAX_META_BYTES = 64 * 2**20


def _directory(path: str | Path, doing: str) -> Path:
    """``path`` as a directory, a leading ``~`` the user's home. An empty text is refused:
    as a Path it is the working directory, so ``save("")`` (an unset variable, say) wrote
    model.json and weights.safetensors there without a word."""
    if isinstance(path, str) and not path.strip():
        raise ModelFileError(
            f"the model directory to {doing} is an empty path: give the directory "
            '("." for the working directory)'
        )
    return Path(path).expanduser()


def save_artifact(
    path: str | Path, *, metadata: dict[str, Any], weights: dict[str, torch.Tensor]
) -> str:
    """Write a model directory atomically enough (temp files, then rename); return its hash.
    A leading ``~`` is the user's home, as pandas reads it (``save("~/models/pumps")`` made a
    directory named ``~`` in the working directory)."""
    directory = _directory(path, "save to")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(f"cannot create model directory {directory}: {exc.strerror}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    weights_tmp = _temp_in(directory, ".weights")
    weights_tmp.write_bytes(save(tensors))  # into our file: its permissions, not 0600
    weights_sha = _sha256_file(weights_tmp)
    meta = dict(metadata)
    meta["format"] = FORMAT_NAME
    meta["format_version"] = FORMAT_VERSION
    meta["weights_sha256"] = weights_sha
    text = json.dumps(_finite(meta), indent=1, sort_keys=True, allow_nan=False)
    meta_tmp = _temp_in(directory, ".json")
    meta_tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    os.replace(meta_tmp, directory / META_FILE)
    return content_hash(text.encode("utf-8"))


def load_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """Read and check a model directory: ``(metadata, weights, content hash)``; a leading
    ``~`` is the user's home."""
    directory = _directory(path, "load")
    meta_path = directory / META_FILE
    weights_path = directory / WEIGHTS_FILE
    if directory.exists() and not directory.is_dir():
        raise ModelFileError(
            f"{directory} is a file, not a model directory: pass the directory that "
            "'anomaly-vae train' wrote (with model.json and weights.safetensors)"
        )
    if not directory.is_dir():
        import shlex

        # Quoted for the shell where it needs it: 'my models/pumps' pasted as said was two
        # arguments.
        raise ModelFileError(
            f"model directory {directory} does not exist: train one with "
            f"'anomaly-vae train DATA.csv --model-dir {shlex.quote(str(directory))}'"
        )
    if not meta_path.is_file() or not weights_path.is_file():
        missing = META_FILE if not meta_path.is_file() else WEIGHTS_FILE
        raise ModelFileError(
            f"{directory} is not a model directory: {missing} is missing{_inner_models(directory)}"
        )
    try:
        size = meta_path.stat().st_size
        if size > MAX_META_BYTES:
            raise ModelFileError(
                f"{meta_path} is over {MAX_META_BYTES // 2**20} MiB ({size:,} bytes): not a "
                "model description anomaly-vae wrote; restore the directory or retrain the model"
            )
        with meta_path.open("rb") as handle:
            raw = handle.read(MAX_META_BYTES + 1)  # it may have grown since
        if len(raw) > MAX_META_BYTES:
            raise ModelFileError(f"{meta_path} is over {MAX_META_BYTES // 2**20} MiB")
        actual = _sha256_file(weights_path)
    except OSError as exc:
        raise ModelFileError(
            f"cannot read {exc.filename or directory}: {exc.strerror or exc}"
        ) from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError: bad UTF-8 or JSON, and an integer of over 4,300 digits, which Python
        # refuses to convert (that one was a traceback from 'info' and a 500 from the API).
        raise ModelFileError(
            f"{meta_path} is corrupt ({exc}): restore it or retrain the model"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{meta_path} is not an anomaly-vae model description")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path} has model format version {version!r}; this anomaly-vae reads version "
            f"{FORMAT_VERSION}: use a matching anomaly-vae release or retrain the model"
        )
    if actual != meta.get("weights_sha256"):
        raise ModelFileError(
            f"{weights_path} does not match the checksum in {META_FILE} (corrupt or replaced): "
            "restore the directory or retrain the model"
        )
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{weights_path} cannot be read ({exc}): retrain the model") from None
    return meta, weights, content_hash(raw.rstrip(b"\n"))


def _inner_models(directory: Path) -> str:
    """'; it holds the model directory ...' when ``directory`` is the folder of the models
    (load_model("models") for models/pumps), else ''."""
    try:
        inner = sorted(
            p
            for p in directory.iterdir()
            if (p / META_FILE).is_file() and (p / WEIGHTS_FILE).is_file()
        )
    except OSError:
        return ""
    if not inner:
        return ""
    names = ", ".join(str(p) for p in inner[:3]) + (", ..." if len(inner) > 3 else "")
    if len(inner) == 1:
        return f"; it holds the model directory {names}: pass that"
    return f"; it holds the model directories {names}: pass one of those"


def content_hash(meta_bytes: bytes) -> str:
    """A model version's identity: the hash of its metadata, which holds the weights' checksum."""
    return hashlib.sha256(meta_bytes).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temp_in(directory: Path, suffix: str) -> Path:
    """A new empty file in ``directory``, with the permissions of any file the user creates
    (0666 less the umask): ``mkstemp``'s 0600 would survive the rename, and a model trained by
    one user could not be read by the service that scores with it."""
    for _ in range(100):
        path = directory / f".tmp-{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ModelFileError(
                f"cannot write to model directory {directory}: {exc.strerror or exc}"
            ) from None
        os.close(fd)
        return path
    raise ModelFileError(f"cannot create a temporary file in {directory}")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
