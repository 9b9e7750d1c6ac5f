"""Weights published as another library's checkpoint at a URL: download once, check the hash, convert, cache.

`create("atss_r50.mmdet_coco_1x", pretrained=True)` comes here (through `dynamic_atss.factory`) for a tag whose entry in
`model_index.json` has a `url`, its published SHA-256 prefix (`hash_prefix`) and a `converter` name:

1. the checkpoint is downloaded once into torch's cache, `$TORCH_HOME/hub/checkpoints/<file>` (where timm and
   torchvision keep URL weights too), into a temporary `*.partial` file whose SHA-256 prefix is checked before
   it is moved into place, so a truncated or wrong download never lands in the cache; a server that sends
   nothing for `$DYNAMIC_ATSS_DOWNLOAD_TIMEOUT` seconds (default 60) ends the download, and the temporary
   file is removed whatever happens;
2. it is read with `torch.load(weights_only=True)` (nothing else is unpickled) and converted by the named
   converter (`dynamic_atss.registry.available_converters()`), then rebuilt strictly;
3. the converted `model.safetensors` + `config.json` (+ model card) are cached next to it, in
   `<file stem>.dynamic-atss/`, with a `conversion.json` saying from what they were made;
4. the model is loaded from that folder, as any saved model. A second call only reads that folder (no network).

Offline (`HF_HUB_OFFLINE=1` or `local_files_only=True`) nothing is downloaded: a cached conversion or a
cached checkpoint is used, otherwise the error names the URL and the manual route (`dynamic-atss convert`).

`DYNAMIC_ATSS_WEIGHTS_MIRROR=http://host/prefix` fetches every URL from that mirror instead (same path below
it; the hash is still checked): for machines that reach the web through a mirror only.

A head family's tags are data in `model_index.json` (converter `mmdet_<family>`); they load once the family
registers its mmdetection head mapping (`dynamic_atss.convert.register_mmdet_head`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from ..errors import UserInputError
from ..files import sha256_file
from ..hub import build_model_from_state_dict, load_pretrained, offline_requested, read_config
from ..registry import FamilyNotAvailableError, available_converters, list_pretrained_cfgs
from .mmdet import load_checkpoint_file

if TYPE_CHECKING:  # pragma: no cover
    from ..models.detector import DynamicATSS
    from ..registry import PretrainedCfg

__all__ = [
    "MIRROR_ENV", "WeightsDownloadError", "checkpoint_path", "converted_dir", "fetch_checkpoint", "load_url_weights",
    "resolve_url",
]


MIRROR_ENV = "DYNAMIC_ATSS_WEIGHTS_MIRROR"
TIMEOUT_ENV = "DYNAMIC_ATSS_DOWNLOAD_TIMEOUT"  # seconds a download may wait for the server's next bytes
DEFAULT_TIMEOUT = 60.0
CONVERSION_NAME = "conversion.json"
_CONVERTED_SUFFIX = ".dynamic-atss"


class WeightsDownloadError(UserInputError, RuntimeError):
    """The checkpoint could not be downloaded (offline, unreachable, HTTP error) or its hash is not the published one."""


def resolve_url(url: str) -> str:
    """`url`, or the same path below `$DYNAMIC_ATSS_WEIGHTS_MIRROR` when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    return mirror.rstrip("/") + urlsplit(url).path


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    import torch  # noqa: PLC0415

    return Path(torch.hub.get_dir()) / "checkpoints"


def checkpoint_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the downloaded checkpoint of `url` is cached."""
    name = os.path.basename(urlsplit(url).path)
    if not name:
        raise ValueError(f"{url!r}: no file name in the URL")
    return _cache_root(cache_dir) / name


def converted_dir(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where its conversion (config.json + model.safetensors) is cached: next to the checkpoint."""
    path = checkpoint_path(url, cache_dir)
    return path.with_name(path.name.split(".")[0] + _CONVERTED_SUFFIX)


def _manual_route(url: str, hash_prefix: str, path: Path, tag: str | None) -> str:
    tag_option = f" --tag {tag}" if tag else ""
    return (
        f"Manual route: download {url} where the web is reachable (its SHA-256 starts with {hash_prefix}), then "
        f"either put it at {path} (it is converted from there, offline too) or convert it yourself: "
        f"`dynamic-atss convert FILE{tag_option} --out DIR` and `dynamic_atss.create(\"DIR\")`."
    )


def download_timeout() -> float:
    """Seconds a download waits for the server's next bytes: `$DYNAMIC_ATSS_DOWNLOAD_TIMEOUT`, default 60."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        timeout = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds > 0")
    return timeout


def _download(source: str, path: Path, progress: bool) -> tuple[str, Path]:
    """Stream `source` into a `*.partial` file beside `path`, hashing it -> (SHA-256 hex digest, that file).

    Written here rather than `torch.hub.download_url_to_file`, which has no timeout (a server that stops
    sending hangs it forever) and leaves its `.partial` file behind when interrupted. The caller moves the
    file into place or deletes it.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    digest = hashlib.sha256()
    try:
        with urlopen(Request(source, headers={"User-Agent": "dynamic-atss"}), timeout=download_timeout()) as response, \
                open(partial, "wb") as file:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(total=expected, unit="B", unit_scale=True, disable=not progress, desc=path.name) as bar:
                while block := response.read(1 << 20):
                    file.write(block)
                    digest.update(block)
                    bar.update(len(block))
            if expected is not None and file.tell() != expected:
                raise http.client.IncompleteRead(b"", expected - file.tell())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), partial


def fetch_checkpoint(
    url: str, hash_prefix: str, *, cache_dir: str | os.PathLike | None = None, force_download: bool = False,
    local_files_only: bool = False, progress: bool = True, tag: str | None = None,
) -> Path:
    """The checkpoint of `url` in the cache, downloaded if needed; its SHA-256 must start with `hash_prefix`.
    A stalled or failed download raises `WeightsDownloadError` naming the URL and the manual route, and leaves
    nothing in the cache."""
    source = resolve_url(url)
    path = checkpoint_path(url, cache_dir)
    if path.is_file() and not force_download:
        if sha256_file(path).startswith(hash_prefix):
            return path
        if offline_requested(local_files_only):
            raise WeightsDownloadError(
                f"{path}: the cached checkpoint's SHA-256 does not start with {hash_prefix} (the published hash of "
                f"{url}) and offline mode is on, so it cannot be downloaded again. {_manual_route(url, hash_prefix, path, tag)}"
            )
    if offline_requested(local_files_only):
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
        raise WeightsDownloadError(
            f"offline mode is on ({why}) and {path.name} is not in the cache ({path.parent}): nothing is downloaded "
            f"from {source}. {_manual_route(url, hash_prefix, path, tag)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A temporary file, moved into place only once its hash matches: nothing partial is cached.
        digest, partial = _download(source, path, progress)
    except TimeoutError:
        raise WeightsDownloadError(
            f"the download of {source} stalled: no data for {download_timeout():g} s (set {TIMEOUT_ENV} to wait "
            f"longer). Nothing was cached. {_manual_route(url, hash_prefix, path, tag)}"
        ) from None
    except http.client.IncompleteRead as error:
        digest, partial = f"incomplete ({error})", None
    except (OSError, http.client.HTTPException) as error:  # URLError / HTTPError / connection resets
        if isinstance(getattr(error, "reason", None), TimeoutError):  # no answer at all within the timeout
            raise WeightsDownloadError(
                f"{source} did not answer within {download_timeout():g} s (set {TIMEOUT_ENV} to wait longer). "
                f"{_manual_route(url, hash_prefix, path, tag)}"
            ) from None
        raise WeightsDownloadError(
            f"could not download {source} ({type(error).__name__}: {error}). {_manual_route(url, hash_prefix, path, tag)}"
        ) from None
    if partial is None or not digest.startswith(hash_prefix):
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise WeightsDownloadError(
            f"the file downloaded from {source} does not have the published SHA-256 prefix {hash_prefix} (got "
            f"{digest}): the download was interrupted or truncated, or the server sent another file. Nothing was "
            f"cached; try again (force_download=True), or: {_manual_route(url, hash_prefix, path, tag)}"
        )
    os.replace(partial, path)
    return path


def _conversion_record(cfg: PretrainedCfg) -> dict[str, Any]:
    from .._version import __version__  # noqa: PLC0415

    return {"tag": cfg.name, "url": cfg.url, "hash_prefix": cfg.hash_prefix, "converter": cfg.converter,
            "library_version": __version__}


def _cached_conversion(folder: Path, record: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / CONVERSION_NAME).read_text()) == record
    except (OSError, ValueError):
        return False


def _convert(cfg: PretrainedCfg, checkpoint: Path, folder: Path, record: dict[str, Any]) -> DynamicATSS:
    """Convert `checkpoint` into `folder` (written in a temporary folder, then renamed into place); returns the
    model it built (eval mode), loaded from that checkpoint."""
    converter = available_converters()[cfg.converter]  # type: ignore[index]
    config, state_dict = converter(load_checkpoint_file(checkpoint))
    model = build_model_from_state_dict(config, state_dict, source=f"{checkpoint} converted with {cfg.converter}")
    partial = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.partial")
    try:
        model.save_pretrained(
            partial, recipe={"name": cfg.name, "source": cfg.description, "url": cfg.url, "converter": cfg.converter},
            metrics=cfg.metrics or None, license="apache-2.0", tags=["converted", cfg.converter or ""],
            description=f"Converted with dynamic-atss from {cfg.url}: {cfg.description}",
        )
        (partial / CONVERSION_NAME).write_text(json.dumps(record, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)  # a stale conversion (another library version or converter)
        try:
            os.replace(partial, folder)
        except OSError:  # another process finished the same conversion first: keep theirs if it is current
            if not _cached_conversion(folder, record):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return model


def load_url_weights(
    cfg: PretrainedCfg,
    *,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    progress: bool = True,
    num_classes: int | None = None,
    **overrides: Any,
) -> DynamicATSS:
    """The model of a URL tag (see the module docstring); `num_classes` / `overrides` as for `load_pretrained`."""
    if not cfg.url or not cfg.hash_prefix:
        raise ValueError(f"{cfg.name}: a URL entry needs both 'url' and 'hash_prefix' (the published SHA-256 prefix)")
    if cfg.converter not in available_converters():
        raise FamilyNotAvailableError(
            f"{cfg.name}: the weights at {cfg.url} need the '{cfg.family}' head family and its converter "
            f"{cfg.converter!r}, which are not available in this version of dynamic-atss yet (converters: "
            f"{sorted(available_converters())}). Until then use a converted tag: {sorted(_available_url_tags())}"
        )
    folder = converted_dir(cfg.url, cache_dir)
    record = _conversion_record(cfg)
    model = None
    if force_download or not _cached_conversion(folder, record):
        checkpoint = fetch_checkpoint(cfg.url, cfg.hash_prefix, cache_dir=cache_dir, force_download=force_download,
                                      local_files_only=local_files_only, progress=progress, tag=cfg.name)
        model = _convert(cfg, checkpoint, folder, record)
    if model is None or num_classes is not None or overrides:
        # a cached conversion, or another config than the converted one: built (once) from the folder
        model = load_pretrained(f"local-dir:{folder}", num_classes=num_classes, **overrides)
    else:  # just converted, as it is: the model the conversion built is the one that folder holds
        document = read_config(folder)[1]
        model.pretrained_info = {"path": str(folder.resolve()), **{key: document.get(key) for key in (
            "recipe", "metrics", "library_version")}}
    model.pretrained_info.update(source="url", tag=cfg.name, url=cfg.url,
                                 checkpoint=str(checkpoint_path(cfg.url, cache_dir)))
    return model


def _available_url_tags() -> list[str]:
    return [cfg.name for cfg in list_pretrained_cfgs() if cfg.url and cfg.converter in available_converters()]
