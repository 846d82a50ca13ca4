"""Checkpoints on the Hugging Face Hub, through ``huggingface_hub``: its cache (``HF_HUB_CACHE``,
``HF_HOME``), ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` / ``hf auth login`` for
private and gated repositories, and its progress bars while downloading.

What :func:`rwkvkit.load_model` (and every ``--model``) takes:

- ``hf://OWNER/REPO/PATH``: one file of the repository (.pth, .safetensors, .gguf, rwkv.cpp .bin);
- ``hf://OWNER/REPO``: the whole repository: a Hugging Face model folder (it has a config.json; the
  weights, config and tokenizer files are fetched, safetensors preferred over pytorch_model.bin), or
  else its only checkpoint file; a repository holding several checkpoints is an error listing them;
- ``OWNER/REPO``: the same as ``hf://OWNER/REPO`` when no local file or folder has that name;
- a revision (branch, tag or commit hash) after the repository: ``hf://OWNER/REPO@REVISION/PATH``,
  ``OWNER/REPO@v1.0`` (a revision holding "/", such as refs/pr/1, is written ``refs%2Fpr%2F1``).

Resolution always goes through huggingface_hub's own functions (``hf_hub_download``,
``snapshot_download``), so a file downloaded once is found again offline, in the same cache other
Hugging Face tools share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from ..errors import CheckpointError

PREFIX = "hf://"
# Hub repository names: letters, digits, "-", "_", "."; at most 96 characters.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^/@\s]+))?(?:/(?P<file>.+))?$")
# A bare OWNER/REPO that ends like a file is far more likely a mistyped local path.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".gguf", ".json", ".txt", ".onnx", ".state")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".gguf")
FORMS = "hf://OWNER/REPO/FILE, hf://OWNER/REPO@REVISION/FILE, hf://OWNER/REPO or OWNER/REPO"


@dataclasses.dataclass(frozen=True)
class HubRef:
    """A model on the Hub: a repository, an optional revision, an optional file in it."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


def parse_hub_ref(text: str) -> HubRef:
    """``hf://OWNER/REPO[@REVISION][/PATH]`` or ``OWNER/REPO[@REVISION]`` -> :class:`HubRef`."""
    body = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    m = _REPO.match(body)
    if m is None or (m.group("file") and not text.startswith(PREFIX)):
        raise CheckpointError(None, f"{text!r} is not a Hugging Face Hub reference; write {FORMS}")
    filename = m.group("file")
    if filename is not None:
        parts = filename.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\\" in filename:
            raise CheckpointError(None, f"{text!r}: {filename!r} is not a file path inside a repository")
    if ("--" in m.group("repo")) or (".." in m.group("repo")):
        raise CheckpointError(None, f"{text!r}: {m.group('repo')!r} is not a valid repository id")
    revision = unquote(m.group("rev")) if m.group("rev") else None
    return HubRef(m.group("repo"), revision, filename)


def is_hub_reference(path: object) -> bool:
    """Whether ``path`` names the Hub: an hf:// string, or an OWNER/REPO string that is no local path."""
    if not isinstance(path, str):
        return False  # a Path object is always local
    if path.startswith(PREFIX):
        return True
    try:
        if Path(path).expanduser().exists() or path.lower().endswith(_FILE_SUFFIXES):
            return False
    except OSError:  # a name too long for the file system is local: its reader says what is wrong
        return False
    return _REPO.match(path) is not None and "/" not in path.split("@", 1)[0].split("/", 1)[1]


def resolve(path: str) -> Path:
    """The local path (in the huggingface_hub cache) of a Hub reference, downloading what is missing."""
    ref = parse_hub_ref(path)
    # A bare OWNER/REPO may be a mistyped local path: say that it was tried as one, too.
    local = "" if path.startswith(PREFIX) else f"{path!r} is no local file or folder; on the Hub, "
    try:
        with _quiet_hub_log():
            if ref.filename is not None:
                return _download(ref, ref.filename)
            return _resolve_repository(ref)
    except CheckpointError as e:
        raise CheckpointError(None, local + e.problem) from None
    except Exception as e:  # huggingface_hub's errors (and its HTTP client's), named for the user
        raise CheckpointError(None, f"{local}{ref}: {_explain(e)}") from None


@contextlib.contextmanager
def _quiet_hub_log() -> Iterator[None]:
    """huggingface_hub logs each failed HTTP try as a warning ("... thrown while requesting HEAD
    ..."); the one error line that follows says it all, so its warnings wait while we resolve."""
    from huggingface_hub.utils import logging as hub_logging

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity(hub_logging.ERROR)
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)


def _download(ref: HubRef, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision))


def _resolve_repository(ref: HubRef) -> Path:
    files = _repo_files(ref)
    top = [f for f in files if "/" not in f]
    if "config.json" in top:
        from huggingface_hub import snapshot_download

        weights = [f for f in top if f.endswith(".safetensors")] or [
            f for f in top if f.startswith("pytorch_model") and f.endswith(".bin")
        ]
        patterns = ["*.json", "*.txt", *weights]  # config, tokenizer files and vocabularies, weights
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns))
    candidates = [f for f in files if f.endswith(CHECKPOINT_SUFFIXES)]
    if len(candidates) == 1:
        return _download(ref, candidates[0])
    listed = ", ".join(candidates[:12]) + (" ..." if len(candidates) > 12 else "")
    if not candidates:
        raise CheckpointError(None, f"{ref}: the repository holds no config.json and no checkpoint file")
    raise CheckpointError(
        None, f"{ref}: the repository holds {len(candidates)} checkpoints ({listed}); name one as {ref}/FILE"
    )


def _repo_files(ref: HubRef) -> list[str]:
    """The repository's files: listed by the Hub, or, offline or unreachable, those in the cache."""
    from huggingface_hub import HfApi, constants

    error: Exception | None = None
    if not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().list_repo_files(ref.repo_id, revision=ref.revision)
        except Exception as e:
            if _is_answer(e):
                raise
            error = e  # the Hub cannot be reached: what the cache holds decides, as in huggingface_hub
    snapshot = _cached_snapshot(ref)
    if snapshot is None:
        why = "HF_HUB_OFFLINE is set" if error is None else f"the Hub cannot be reached ({_explain(error)})"
        raise CheckpointError(
            None,
            f"{ref}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; download it first",
        )
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _cached_snapshot(ref: HubRef) -> Path | None:
    """The cache's snapshot folder of this revision, if the cache has one (huggingface_hub's layout:
    models--OWNER--REPO/refs/REVISION holds the commit, snapshots/COMMIT the files)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ref.repo_id, repo_type="model")
    revision = ref.revision or "main"
    commit = revision
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        ref_file = storage / "refs" / revision
        if not ref_file.is_file():
            return None
        commit = ref_file.read_text().strip()
    folder = storage / "snapshots" / commit
    return folder if folder.is_dir() else None


def _is_answer(e: Exception) -> bool:
    """Whether the Hub answered (the repository, revision or file does not exist, or is gated), as
    opposed to not being reachable."""
    from huggingface_hub import errors

    return isinstance(
        e, errors.RepositoryNotFoundError | errors.RevisionNotFoundError | errors.GatedRepoError
    )


def _explain(e: Exception) -> str:
    """One line for a huggingface_hub failure."""
    from huggingface_hub import errors

    if isinstance(e, errors.GatedRepoError):
        return "the repository is gated: accept its terms on the Hub and log in (hf auth login or HF_TOKEN)"
    if isinstance(e, errors.RepositoryNotFoundError):
        return "no such repository on the Hub (or it is private: log in with hf auth login or set HF_TOKEN)"
    if isinstance(e, errors.RevisionNotFoundError):
        return "no such revision (branch, tag or commit) in the repository"
    if isinstance(e, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):  # before EntryNotFound
        return "not in the Hugging Face cache, and the Hub cannot be reached (HF_HUB_OFFLINE, or no network)"
    if isinstance(e, errors.EntryNotFoundError):
        return "no such file in the repository at this revision"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {first}"
