"""Load a saved model from a folder or a Hugging Face Hub repo: `load_pretrained`.

Hub access goes through `huggingface_hub.snapshot_download(allow_patterns=[config.json, model.safetensors])`:
one call resolves the revision to a commit and fetches both files of that commit, so a push in between can
never mix two models. Its cache, `HF_HUB_OFFLINE`, `local_files_only`, `force_download`, tokens and
`HF_ENDPOINT` mirrors behave as for any Hub library. Names understood (and so by `dynamic_atss.create`):

- `"hf-hub:org/name"` or `"hf-hub:org/name@revision"` (branch, tag or commit sha);
- `"local-dir:/path/to/folder"`;
- a plain path to an existing folder; a bare `"org/name"` that is not a local folder is looked up on the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserInputError
from ..locations import is_model_folder, is_repo_id, parse_location
from .folder import load_model_dir
from .serialization import CONFIG_NAME, LIBRARY_NAME, WEIGHTS_NAME, _library_version, build_model_from_state_dict

if TYPE_CHECKING:  # pragma: no cover
    from ..models.detector import DynamicATSS

__all__ = ["HubFilesMissingError", "HubUnreachableError", "load_pretrained", "offline_requested"]


class HubUnreachableError(UserInputError, RuntimeError):
    """The Hub could not be reached (or offline mode is on) and the weights are not in the local cache."""


class HubFilesMissingError(UserInputError, FileNotFoundError):
    """The Hub repo exists at that revision but lacks `config.json` or `model.safetensors`."""


def offline_requested(local_files_only: bool = False) -> bool:
    """`local_files_only`, or HF_HUB_OFFLINE as huggingface_hub read it at import or as set since."""
    from huggingface_hub import constants  # noqa: PLC0415

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(local_files_only or constants.HF_HUB_OFFLINE or env)


def _parse_name(name: str) -> tuple[str, str, str | None]:
    """-> ("hub", repo_id, revision) or ("dir", path, None); `dynamic_atss.locations.parse_location`, plus a bare
    'org/name[@revision]' (not a local folder) as a Hub repo."""
    name = os.fspath(name)
    location = parse_location(name)
    if location is not None:
        return location
    repo, _, revision = name.partition("@")
    if is_repo_id(repo):
        return "hub", repo, revision or None
    raise FileNotFoundError(
        f"{name!r} is not a folder; pass a folder holding {CONFIG_NAME} and {WEIGHTS_NAME} "
        "('local-dir:/path' or the path itself), or a Hub repo as 'hf-hub:org/name[@revision]'"
    )


def _root_cause(error: BaseException) -> BaseException:
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return error


def _download(
    repo_id: str, revision: str | None, *, cache_dir: str | os.PathLike | None, local_files_only: bool,
    token: str | bool | None, endpoint: str | None, force_download: bool = False,
) -> Path:
    """config.json and model.safetensors of one commit, in one `snapshot_download` call -> the snapshot folder."""
    from huggingface_hub import constants, snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import (  # noqa: PLC0415
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = offline_requested(local_files_only)
    shown_revision = revision or constants.DEFAULT_REVISION
    shown_endpoint = endpoint or constants.ENDPOINT
    shown_cache = str(cache_dir or constants.HF_HUB_CACHE)
    try:
        folder = Path(snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline, token=token, endpoint=endpoint,
            force_download=force_download, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], library_name=LIBRARY_NAME,
            library_version=_library_version(),
        ))
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        what = "revision" if isinstance(error, RevisionNotFoundError) else "repository"
        extra = ("" if isinstance(error, RevisionNotFoundError) else
                 " If it is private or gated, pass token= (or log in with `hf auth login`)."
                 + (" It is gated: accept its conditions on the Hub first." if isinstance(error, GatedRepoError) else ""))
        local = "" if isinstance(error, RevisionNotFoundError) or Path(repo_id).exists() \
            else f" (there is no local folder named {repo_id!r} either)"
        error.append_to_message(
            f"\n\ndynamic-atss: could not load Hub model {repo_id!r} at revision {shown_revision!r} from "
            f"{shown_endpoint}: {what} not found{local}.{extra}"
        )
        raise
    except LocalEntryNotFoundError as error:  # also IncompleteSnapshotError (a partial cached snapshot)
        cause = _root_cause(error)
        if offline:
            why = ("offline mode is on (" + ("local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1")
                   + ") and the files are not in the local cache")
        else:
            why = f"the Hub could not be reached ({type(cause).__name__}: {cause}) and the files are not in the local cache"
        unreachable = HubUnreachableError(
            f"could not load dynamic-atss weights {repo_id!r} (revision {shown_revision!r}, files {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}) from the Hugging Face Hub at {shown_endpoint}: {why} (cache: {shown_cache}).\n"
            f"To use weights you have on disk, pass the folder holding {CONFIG_NAME} and {WEIGHTS_NAME}:\n"
            f"    dynamic_atss.create(\"local-dir:/path/to/folder\")\n"
            f"or download it where the Hub is reachable (`hf download {repo_id} --revision {shown_revision}`), "
            "copy the cache (HF_HOME) here and set HF_HUB_OFFLINE=1. A mirror is used with HF_ENDPOINT or endpoint=."
        )
        unreachable.original_error = error  # type: ignore[attr-defined]
        raise unreachable from None
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise HubFilesMissingError(
            f"Hub repo {repo_id!r} (revision {shown_revision!r}, commit {folder.name}) has no {' and no '.join(missing)}; "
            f"a dynamic-atss model repo holds {CONFIG_NAME} and {WEIGHTS_NAME} (written by model.push_to_hub). "
            "Checkpoints of other libraries need converting first (`dynamic-atss convert FILE --out DIR` for mmdetection)."
        )
    return folder


def load_pretrained(
    name: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: str | bool | None = None,
    num_classes: int | None = None,
    endpoint: str | None = None,
    model_class: type | None = None,
    **overrides: Any,
) -> DynamicATSS:
    """Load a saved model: `"hf-hub:org/name[@revision]"`, `"local-dir:/path"` or an existing folder.

    `revision` (branch, tag or commit) is an alternative to `@revision`; `cache_dir`, `local_files_only`,
    `force_download`, `token` and `endpoint` go to huggingface_hub (HF_HUB_OFFLINE=1 acts like
    `local_files_only=True`). `num_classes` different from the checkpoint's re-initialises the classification
    layer (fine-tuning); `**overrides` are load-time config changes such as `min_size=640` or
    `**{"test.score_thresh": 0.3}`. `model_class`: the class to build (default: the one registered for the
    config's architecture). Returns the model in eval mode, with `model.pretrained_info` saying where it came from.
    """
    kind, target, name_revision = _parse_name(name)
    if kind == "hub":
        if revision is not None and name_revision is not None and revision != name_revision:
            raise ValueError(f"{name!r}: revision given twice ({name_revision!r} in the name, {revision!r} as argument)")
        revision = revision or name_revision
        directory = _download(target, revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token,
                              endpoint=endpoint, force_download=force_download)
        source = f"Hub model {target!r} (commit {directory.name})"
        info = {"source": "hf-hub", "repo_id": target, "revision": revision, "commit": directory.name,
                "path": str(directory)}
    else:
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to Hub models, not to the folder {target!r}")
        directory = Path(target).expanduser()
        source = str(directory / WEIGHTS_NAME)
        info = {"source": "local-dir", "path": str(directory.resolve()) if directory.exists() else str(directory)}
    config, document, state_dict = load_model_dir(directory)
    model = build_model_from_state_dict(
        config, state_dict, num_classes=num_classes, overrides=overrides, source=source, model_class=model_class
    )
    info.update(recipe=document.get("recipe"), metrics=document.get("metrics"),
                library_version=document.get("library_version"))
    model.pretrained_info = info
    return model
