"""`llama-api pull`: download a model from the Hugging Face Hub into the models folder.

huggingface_hub does the talking: repository info (file list, sizes, checksums), file
metadata, authenticated HTTP downloads with retries and a progress bar. This module decides
what to download, keeps partial files so that a rerun resumes where the last run stopped,
checks each file against the Hub's checksum, and moves only verified files into place.

Partial and staged files live in `<models dir>/.pull/`: the registry serves nothing from a
hidden folder, so a model appears only once it is complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from llama_api.scheduling.memory import format_size

STAGING = ".pull"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
SPLIT_GGUF = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.gguf", re.IGNORECASE)
# Copies of the weights for runtimes no backend here uses; a folder pull leaves them out.
OTHER_RUNTIMES = re.compile(r"(^|/)(onnx|openvino|coreml)/|\.(onnx|onnx_data|h5|msgpack|ot|tflite)$")
TORCH_BIN = re.compile(r"(^|/)pytorch_model[^/]*\.bin(\.index\.json)?$")


class PullError(Exception):
    """A pull that cannot go on; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RemoteFile:
    name: str                # path inside the repository
    size: int | None
    sha256: str | None       # LFS files: the Hub's sha256 of the content
    blob_id: str | None      # other files: the git blob id (a sha1)

    @property
    def key(self) -> str:
        """Names the partial download: the same content always resumes the same file."""
        return self.sha256 or self.blob_id or hashlib.sha256(self.name.encode()).hexdigest()


def pull_model(repo: str, filename: str | None = None, *, quant: str | None = None,
               models_dir: Path = Path("models"), revision: str | None = None) -> Path:
    """Download `filename` (or the `quant` GGUF, or the whole repo) into `models_dir`."""
    check_repo_id(repo)
    if filename is not None and quant is not None:
        raise PullError("give FILE or --quant, not both", exit_code=2)
    if filename is not None:
        check_file_name(filename, "FILE")
    hub = import_hub()
    with hub_errors(repo, revision):
        info = hub.HfApi().model_info(repo, revision=revision, files_metadata=True)
        files = [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
                 for s in info.siblings or []]
        for remote in files:
            check_file_name(remote.name, f"the Hub's file list for {repo}")
        commit = info.sha or revision or "main"
        chosen = choose_files(repo, files, filename, quant)
        staging = Path(models_dir) / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        if chosen is None:  # no GGUF: the repository is the model folder
            target = Path(models_dir) / repo.split("/")[-1]
            pull_folder(hub, repo, commit, folder_files(files), target, staging)
        else:
            for remote in chosen:
                fetch(hub, repo, commit, remote, Path(models_dir) / PurePosixPath(remote.name).name,
                      staging)
            target = Path(models_dir) / PurePosixPath(chosen[0].name).name
    remove_if_empty(staging)
    return target


# -- what to download ---------------------------------------------------------------------

def check_repo_id(repo: str) -> None:
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise PullError(f"not a repository id: {repo!r} (expected owner/name, letters, digits, "
                        "'.', '_' and '-')", exit_code=2)


def check_file_name(name: str, where: str) -> None:
    """A repository path that stays inside the folder it is written to."""
    path = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or path.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise PullError(f"unsafe file name in {where}: {name!r} (a path inside the "
                        "repository, without '..')", exit_code=2)


def is_hidden(name: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(name).parts)


def folder_files(files: list[RemoteFile]) -> list[RemoteFile]:
    """What a model folder needs: not git's files, not other runtimes' copies of the weights,
    and no pytorch_model.bin next to safetensors (the same weights twice)."""
    wanted = [f for f in files if not is_hidden(f.name) and not OTHER_RUNTIMES.search(f.name)]
    if any(f.name.endswith(".safetensors") for f in wanted):
        wanted = [f for f in wanted if not TORCH_BIN.search(f.name)]
    return wanted


def has_quant(name: str, quant: str) -> bool:
    """Q4_K matches `model.Q4_K.gguf`, not `model.Q4_K_M.gguf` nor `model.IQ4_K.gguf`."""
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, name, re.IGNORECASE) is not None


def choose_files(repo: str, files: list[RemoteFile], filename: str | None,
                 quant: str | None) -> list[RemoteFile] | None:
    """The files to download as one model, or None for the whole repository (a folder)."""
    names = ", ".join(f.name for f in files) or "none"
    if filename is not None:
        found = [f for f in files if f.name == filename]
        if not found:
            raise PullError(f"{repo} has no file {filename!r}; its files: {names}", exit_code=2)
        return found
    ggufs = [f for f in files if f.name.lower().endswith(".gguf")]
    listing = "\n".join(f"  {f.name}  ({'size unknown' if f.size is None else format_size(f.size)})" for f in ggufs)
    if quant is not None:
        if not ggufs:
            raise PullError(f"--quant picks a .gguf file, and {repo} has none; its files: {names}",
                            exit_code=2)
        matching = [f for f in ggufs if has_quant(f.name, quant)]
        if not matching:
            raise PullError(f"no .gguf file of {repo} is {quant}; its .gguf files:\n{listing}",
                            exit_code=2)
        model = one_model(matching)
        if model is None:
            several = "\n".join(f"  {f.name}" for f in matching)
            raise PullError(f"several .gguf files of {repo} are {quant}; name one as FILE:\n"
                            f"{several}", exit_code=2)
        return model
    if not ggufs:
        return None
    model = one_model(ggufs)
    if model is None:
        raise PullError(f"{repo} has several .gguf files; pick one with --quant Q or FILE:\n"
                        f"{listing}", exit_code=2)
    return model


def one_model(candidates: list[RemoteFile]) -> list[RemoteFile] | None:
    """One file, or every part of one split GGUF (`x-00001-of-00003.gguf`, ...)."""
    if len(candidates) == 1:
        return candidates
    parts = [SPLIT_GGUF.fullmatch(f.name) for f in candidates]
    if all(parts) and len({(p.group(1), p.group(3)) for p in parts}) == 1 \
            and len(candidates) == int(parts[0].group(3)):
        return sorted(candidates, key=lambda f: f.name)
    return None


# -- downloading --------------------------------------------------------------------------

def pull_folder(hub, repo: str, commit: str, files: list[RemoteFile], target: Path,
                staging: Path) -> None:
    """Every file into a staged folder, then the folder into place in one rename."""
    if target.exists():  # pulled before: check it, download nothing
        for remote in files:
            fetch(hub, repo, commit, remote, target / remote.name, staging)
        return
    if not files:
        raise PullError(f"{repo} has no files to download")
    assembled = staging / repo.replace("/", "--")
    for remote in files:
        fetch(hub, repo, commit, remote, assembled / remote.name, staging)
    os.replace(assembled, target)


def fetch(hub, repo: str, commit: str, remote: RemoteFile, destination: Path,
          staging: Path) -> None:
    """Download `remote` to `destination`, resuming a partial download, checked first."""
    if destination.exists():
        if matches_checksum(destination, remote):
            say(f"{remote.name}: already downloaded, checksum verified")
            return
        raise PullError(f"{destination} exists and differs from {remote.name} of {repo}; "
                        "remove it to pull again")
    partial = staging / f"{remote.key}.part"
    with only_puller(partial, remote.name):
        download(hub, repo, commit, remote, partial)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, destination)


def download(hub, repo: str, commit: str, remote: RemoteFile, partial: Path) -> None:
    """Complete `partial` from the Hub (a Range request for the rest), then check it."""
    url = hub.hf_hub_url(repo, remote.name, revision=commit)
    metadata = hub.get_hf_file_metadata(url)
    size = remote.size if remote.size is not None else metadata.size
    headers = hub.utils.build_hf_headers()  # the token (HF_TOKEN), user agent
    if origin(metadata.location) != origin(url):
        headers.pop("authorization", None)  # a CDN's signed URL: the token stays with the Hub
    done = partial.stat().st_size if partial.exists() else 0
    if size is not None and done > size:  # not a prefix of this file: start over
        partial.unlink()
        done = 0
    resuming = f", resuming at {format_size(done)}" if done else ""
    say(f"{remote.name}: {'size unknown' if size is None else format_size(size)} from {repo}@{commit[:12]}{resuming}")
    with partial.open("ab") as out:
        hub.file_download.http_get(metadata.location, out, resume_size=done, headers=headers,
                                   expected_size=size,
                                   displayed_filename=PurePosixPath(remote.name).name)
    if not matches_checksum(partial, remote, delete_if_not=True):
        raise PullError(f"{remote.name}: the download does not match the Hub's checksum "
                        f"({checksum_kind(remote)} {remote.sha256 or remote.blob_id}); it was "
                        "deleted. Run the command again to download it afresh.")


@contextmanager
def only_puller(partial: Path, name: str):
    """Two pulls appending to one partial file would corrupt it: the second one stops."""
    from filelock import FileLock, Timeout  # a dependency of huggingface_hub

    lock = FileLock(f"{partial}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise PullError(f"{name} is being downloaded by another `llama-api pull` right now") from None
    try:
        yield
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


def matches_checksum(path: Path, remote: RemoteFile, delete_if_not: bool = False) -> bool:
    """The file against the Hub's sha256 (LFS) or git blob id (others); size if neither."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        ok = False
    elif remote.sha256:
        ok = file_digest(path, hashlib.sha256()) == remote.sha256.lower()
    elif remote.blob_id:
        ok = file_digest(path, hashlib.sha1(b"blob %d\0" % size)) == remote.blob_id.lower()
    else:
        say(f"{remote.name}: the Hub gave no checksum; only its size was checked")
        ok = True
    if not ok and delete_if_not:
        path.unlink()
    return ok


def checksum_kind(remote: RemoteFile) -> str:
    return "sha256" if remote.sha256 else "git blob id" if remote.blob_id else "size"


def file_digest(path: Path, digest) -> str:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


# -- huggingface_hub, its errors, and output ----------------------------------------------

def import_hub():
    try:
        import huggingface_hub
        import huggingface_hub.file_download
    except ImportError:
        raise PullError("`llama-api pull` needs huggingface_hub: "
                        "pip install 'llama-api[pull]'") from None
    return huggingface_hub


@contextmanager
def hub_errors(repo: str, revision: str | None):
    """huggingface_hub's and the HTTP client's exceptions, as messages that say what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    try:
        from httpx2 import HTTPError as TransportError  # the HTTP client of huggingface_hub 2.x
    except ImportError:
        TransportError = OSError
    token_hint = ("the token in HF_TOKEN has no access to it" if os.environ.get("HF_TOKEN")
                  else "set HF_TOKEN to a token of an account with access")
    try:
        yield
    except GatedRepoError:
        raise PullError(f"{repo} is gated: accept its conditions on the Hub, and {token_hint}") from None
    except RepositoryNotFoundError:
        raise PullError(f"{repo}: no such repository on {constants.ENDPOINT} "
                        f"(if it is private, {token_hint})", exit_code=2) from None
    except RevisionNotFoundError:
        raise PullError(f"{repo} has no revision {revision!r}", exit_code=2) from None
    except HfHubHTTPError as exc:
        raise PullError(f"the Hub refused: {exc}") from None
    except (TransportError, OSError) as exc:
        raise PullError(f"pull from {constants.ENDPOINT} failed: {exc}; run the command "
                        "again to resume") from None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # still holds a partial download for a later run, or already gone
