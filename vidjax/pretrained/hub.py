"""Hugging Face Hub names as checkpoints: `owner/name`, `owner/name@REV`, `owner/name/path/in/repo.pth[@REV]`.

    model = vidjax.pretrained.load("MCG-NJU/videomae-base-finetuned-kinetics")
    python -m vidjax.predict --checkpoint=MCG-NJU/videomae-base-finetuned-kinetics clip.mp4
    python -m vidjax.main --config=configs/videomae_finetune_k400.py --config.init_from=MCG-NJU/videomae-base ...
    python -m vidjax.convert --from_videomae OpenGVLab/VideoMAE2/distill/vit_b_k710_dl_from_giant.pth --out DST

Every reader of a checkpoint asks this module first: `pretrained.load` / `read_config` / `init_from` (so predict,
extract, evaluate, demo, export and the trainer's init_from) call `resolve`, `python -m vidjax.convert --from_*`
calls `source`. A local path that exists always wins. Otherwise a name of this form is a Hub repository holding a
`save_pretrained` model of an architecture vidjax converts (`vidjax.convert.hf.supported()`), or a checkpoint file
inside a repository: an official VideoMAE / VideoMAE V2, SVT, VideoMamba, V-JEPA 2 or VideoPrism file, its kind told
by its tensor names (`vidjax.convert.file_kind`). REV is a branch, tag or commit (default main).

Downloads go through `huggingface_hub` (the `hub` extra: `pip install 'vidjax[hub]'`), so its cache ($HF_HOME/hub),
HF_HUB_OFFLINE, HF_ENDPOINT and tokens (HF_TOKEN, `hf auth login`) apply; only the files a conversion reads are
fetched. The converted checkpoint is kept in vidjax's cache, $VIDJAX_HUB_CACHE or `$XDG_CACHE_HOME/vidjax/hub`
(`~/.cache/vidjax/hub`): `<owner>--<name>/<commit>/model` for a repository, `<owner>--<name>/<commit>/files/<path>`
for a file, keyed by the commit the revision resolved to and written atomically, so a later load converts nothing.
Online, a load asks the Hub which commit the revision names now (one request; none for a commit hash already
converted); offline (HF_HUB_OFFLINE=1), or with the Hub unreachable, it takes the commit the revision last resolved
to (`<owner>--<name>/refs/<rev>`) and makes no request at all. Every failure is a `HubError` (a `ConversionError`)
of one line saying what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from types import ModuleType

from vidjax import fileio
from vidjax.convert import file_kind, read
from vidjax.convert.common import META_FILE, ConversionError, write_converted
from vidjax.convert.hf import TOKENIZER_FILES, supported

ENV = "VIDJAX_HUB_CACHE"
INSTALL = "pip install 'vidjax[hub]'"
DEFAULT_REVISION = "main"
# Repository ids as the Hub spells them: owner/name, each part letters, digits, '.', '_', '-', no '--' or '..'.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_NAME = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:/(?P<file>[^@]+))?(?:@(?P<revision>[^@]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_DATASET = re.compile(rf"(?:{_PART}/)?{_PART}")
# A git branch name (git check-ref-format, simplified): no spaces or ~^:?*[\\, no '..', '@{', '//', not starting with
# '-' or '/', not ending with '/', '.' or '.lock'.
_BRANCH = re.compile(r"(?![-/])(?!.*\.\.)(?!.*@\{)(?!.*//)[^\s~^:?*\[\\]{1,200}(?<![/.])(?<!\.lock)")
# A `save_pretrained` folder's files that a conversion reads besides the weights (config, preprocessing, generation
# settings, a tokenizer), and its weights in the order the converter prefers them.
_HF_FILES = ("config.json", "preprocessor_config.json", "video_preprocessor_config.json", "generation_config.json",
             *TOKENIZER_FILES)
_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class HubError(ConversionError):
    """A Hub name that gives no checkpoint: not found, unreachable with no cached copy, an architecture vidjax does
    not convert, or huggingface_hub missing. The message is one line naming the fix."""


class _Unreachable(Exception):
    """The Hub cannot be asked (offline mode, no network, a server error): the caches may still answer."""


@dataclasses.dataclass(frozen=True)
class HubName:
    """A parsed Hub name: the repository, a file inside it (None: the repository's `save_pretrained` model) and the
    revision (None: main)."""

    text: str
    repo_id: str
    filename: str | None
    revision: str | None

    @property
    def rev(self) -> str:
        return self.revision or DEFAULT_REVISION

    @property
    def folder(self) -> str:
        """The repository's folder in vidjax's cache, named as huggingface_hub names its own."""
        return self.repo_id.replace("/", "--")


def parse(text: object) -> HubName | None:
    """The Hub name `text` spells, or None. Only strings are names: a `pathlib.Path` is always a path."""
    if not isinstance(text, str):
        return None
    match = _NAME.fullmatch(text)
    if match is None or "--" in match["repo"] or ".." in match["repo"]:
        return None
    filename = match["file"]
    if filename is not None and any(part in ("", ".", "..") for part in filename.split("/")):
        return None
    return HubName(text, match["repo"], filename, match["revision"])


def repository(repo_id: str) -> HubName:
    """`repo_id` as a repository to write to (owner/name, no file, no revision), or a HubError saying what one is."""
    name = parse(repo_id)
    if name is None or name.filename is not None or name.revision is not None:
        raise HubError(f"{repo_id!r} is no Hub repository id: give owner/name (letters, digits, '.', '_', '-'), e.g. "
                       f"my-user/videomae-finetuned-ucf101.")
    return name


def cache_dir(environ: Mapping[str, str] | None = None) -> pathlib.Path:
    """vidjax's folder of converted Hub checkpoints: $VIDJAX_HUB_CACHE, else `$XDG_CACHE_HOME/vidjax/hub`."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV)
    return pathlib.Path(fileio.user_path(value) if value else fileio.user_cache_dir("hub", environ))


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """The local folder a checkpoint argument names: the path itself when it exists or spells no Hub name (the
    readers then say what they expected), else the vidjax conversion of the Hub repository or file it names."""
    local = pathlib.Path(fileio.user_path(path))
    name = None if local.exists() else parse(path)
    return local if name is None else checkpoint(name)


def source(path: str, flag: str, *, file: bool) -> str:
    """What `python -m vidjax.convert {flag}=path` reads: `path` when it exists or spells no Hub name, else the
    downloaded checkpoint file inside a repository (`file`) or the repository's `save_pretrained` snapshot folder,
    both in huggingface_hub's cache."""
    name = None if os.path.exists(fileio.user_path(path)) else parse(path)
    if name is None:
        return path
    if file and name.filename is None:
        raise HubError(f"{flag}={path} names a repository; {flag} converts one checkpoint file: name it inside the "
                       f"repository as {name.repo_id}/PATH/IN/REPO.pth{_at(name)}.")
    if not file and name.filename is not None:
        raise HubError(f"{flag}={path} names a file inside a repository; {flag} converts a repository's "
                       f"save_pretrained model ({name.repo_id}{_at(name)}). Convert an official .pth file with "
                       f"--from_videomae, --from_svt or --from_videomamba.")
    hf = _client(name)
    try:
        commit, files = _remote(hf, name)
        return str(_download(hf, name, commit, files, vidjax_ok=False))
    except _Unreachable as why:
        return str(_cached_download(hf, name, str(why))[1])


def checkpoint(name: HubName) -> pathlib.Path:
    """The vidjax checkpoint folder of Hub name `name` in vidjax's cache, downloaded and converted on first use."""
    root = cache_dir() / name.folder
    known = name.rev if _COMMIT.fullmatch(name.rev) else (_read_ref(root, name.rev) if _offline() else None)
    if known and (_converted_dir(root, known, name) / META_FILE).is_file():
        return _converted_dir(root, known, name)  # nothing to ask: a commit never changes
    hf = _client(name)
    try:
        commit, files = _remote(hf, name)
        _write_ref(root, name.rev, commit)
        dst = _converted_dir(root, commit, name)
        if (dst / META_FILE).is_file():
            return dst
        path = _download(hf, name, commit, files)
    except _Unreachable as why:
        commit = known or _read_ref(root, name.rev)
        if commit and (_converted_dir(root, commit, name) / META_FILE).is_file():
            return _converted_dir(root, commit, name)
        commit, path = _cached_download(hf, name, str(why))
        dst = _converted_dir(root, commit, name)
    if name.filename is None and (path / META_FILE).is_file():
        with _writing(dst):
            _copy_checkpoint(path, dst)
        return dst
    kind = "hf" if name.filename is None else file_kind(path)
    if kind is None:
        raise HubError(f"{name.text} is no checkpoint vidjax converts: its tensors are none of the official VideoMAE "
                       f"/ VideoMAE V2, SVT, VideoMamba, V-JEPA 2 or VideoPrism layouts. Name a file of one of these, "
                       f"or a repository holding a save_pretrained model of {', '.join(supported())}.")
    converted = read(kind, path)
    converted.source["hub"] = {"repo_id": name.repo_id, "filename": name.filename, "revision": name.rev,
                               "commit": commit, "endpoint": _endpoint(hf)}
    with _writing(dst):
        write_converted(converted, dst, overwrite=True)
    return dst


def dataset_id(text: str) -> str:
    """`text` as a Hub dataset id (`name` or `owner/name`, spelled as huggingface_hub's `validate_repo_id` wants), or
    a HubError saying what one is."""
    if _DATASET.fullmatch(text) is None or "--" in text or ".." in text or text.endswith(".git"):
        raise HubError(f"--dataset={text!r} is no Hub dataset id: give name or owner/name (letters, digits, '.', '_', "
                       f"'-'), e.g. --dataset=kinetics400 or --dataset=my-user/my-videos.")
    return text


def branch(text: str) -> str:
    """`text` as a branch to commit to (a git branch name that is no commit hash), or a HubError saying what one
    is."""
    if _BRANCH.fullmatch(text) is None or _COMMIT.fullmatch(text) or text.startswith("refs/"):
        raise HubError(f"--revision={text!r} is no branch name: give a branch of the repository (created from "
                       f"{DEFAULT_REVISION} when missing), e.g. --revision=experiments; letters, digits, '.', '_', "
                       f"'-' and '/', no '..', spaces or a trailing '/' or '.lock'.")
    return text


def web_url(repo_id: str, revision: str = DEFAULT_REVISION) -> str:
    """The page of a repository's branch on the Hub HF_ENDPOINT names."""
    return f"{_endpoint()}/{repo_id}/tree/{urllib.parse.quote(revision, safe='')}"


@dataclasses.dataclass
class Upload:
    """What `upload` has done so far, for a caller interrupted part way (`python -m vidjax.push` says it): whether it
    created the repository, made it private, created the branch, sent the commit, and the commit's URL once the Hub
    answered. A commit is atomic on the Hub: a commit that was sent and not answered is all there or not at all."""

    repo_id: str
    branch: str = DEFAULT_REVISION
    created: bool = False
    made_private: bool = False
    branch_created: bool = False
    committing: bool = False
    commit_url: str | None = None


def upload(folder: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
           message: str = "Upload with python -m vidjax.push", progress: Upload | None = None) -> str:
    """Uploads `folder` to the Hub model repository `repo_id` in one commit of huggingface_hub's upload API, on branch
    `revision` (default main); returns the commit's URL.

    A missing repository is created (`private` then); an existing public one is made private first when `private`
    (a HubError when the token may not change its settings); an existing private one stays private. A missing branch
    is created from main before the commit; a tag is refused before anything changes. `progress` records each step
    as it is done."""
    name = repository(repo_id)
    rev = branch(revision) if revision else DEFAULT_REVISION
    progress = progress if progress is not None else Upload(repo_id, rev)
    progress.branch = rev
    hf = _client(name)
    if _offline():
        raise HubError(f"cannot upload to {repo_id} in offline mode (HF_HUB_OFFLINE is set): unset it, or pass "
                       f"--dry_run to write the folder without uploading.")
    api = hf.HfApi(endpoint=_endpoint(hf))
    errors = hf.utils
    try:
        with _answers(hf, name, writing=True):
            try:
                info = api.model_info(repo_id)
            except errors.RepositoryNotFoundError:  # missing, or private to another token: creating tells which
                info = None
            if info is not None and rev != DEFAULT_REVISION:
                refs = api.list_repo_refs(repo_id)
                if rev in {ref.name for ref in refs.tags} and rev not in {ref.name for ref in refs.branches}:
                    raise HubError(f"--revision={rev}: {rev!r} is a tag of {repo_id}, and commits go to branches: "
                                   f"give a branch (created from {DEFAULT_REVISION} when missing), or leave "
                                   f"--revision out for {DEFAULT_REVISION}. Nothing was uploaded.")
                missing_branch = rev not in {ref.name for ref in refs.branches}
            else:
                missing_branch = rev != DEFAULT_REVISION
            if info is None:
                api.create_repo(repo_id, private=private, exist_ok=True)
                progress.created = True
            elif private and not info.private:
                try:
                    api.update_repo_settings(repo_id, private=True)
                except errors.HfHubHTTPError as e:
                    status = getattr(e.response, "status_code", None)
                    raise HubError(f"{repo_id} exists and is public, and --private could not make it private (the Hub "
                                   f"answered {status}): make it private in its settings on the Hub ({_endpoint(hf)}/"
                                   f"{repo_id}/settings) and push again, or push without --private. Nothing was "
                                   f"uploaded.") from e
                progress.made_private = True
            if missing_branch:
                api.create_branch(repo_id, branch=rev, revision=DEFAULT_REVISION, exist_ok=True)
                progress.branch_created = True
            progress.committing = True
            url = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=rev,
                                    commit_message=message).commit_url
            progress.commit_url = url
            return url
    except _Unreachable as why:
        raise HubError(f"cannot reach the Hugging Face Hub to upload to {repo_id} ({why}): check the network and "
                       f"HF_ENDPOINT ({_endpoint(hf)}), or pass --dry_run to write the folder without uploading."
                       ) from why


# ------------------------------------------------------------------------------------------------ the client


def _client(name: HubName) -> ModuleType:
    try:
        import huggingface_hub  # the `hub` extra
        import huggingface_hub.constants
        import huggingface_hub.utils  # its errors
    except ImportError as e:
        raise HubError(f"{name.text} is no local path, and as a Hugging Face Hub name it needs the huggingface_hub "
                       f"package ({e}): {INSTALL}.") from e
    return huggingface_hub


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when it was set after huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    constants = sys.modules.get("huggingface_hub.constants")
    return value.upper() in ("1", "ON", "YES", "TRUE") or bool(constants and constants.HF_HUB_OFFLINE)


def _endpoint(hf: ModuleType | None = None) -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import), else the client's default."""
    value = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    return value or (hf.constants.ENDPOINT if hf is not None else "https://huggingface.co")


def _at(name: HubName) -> str:
    return f"@{name.revision}" if name.revision else ""


def _is_network_error(hf: ModuleType, e: BaseException) -> bool:
    errors = hf.utils
    if isinstance(e, errors.HfHubHTTPError):
        return e.response is not None and e.response.status_code >= 500  # the Hub is down: the caches may answer
    if isinstance(e, errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError | ConnectionError | TimeoutError):
        return True
    # The HTTP client's own errors (connection refused, timeouts, DNS): httpx in huggingface_hub 1.x, requests before.
    return type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


@contextlib.contextmanager
def _answers(hf: ModuleType, name: HubName, filename: str | None = None, *, writing: bool = False
             ) -> Iterator[None]:
    """The client's errors as one-line `HubError`s naming the fix (for an upload when `writing`); network failures
    and server errors as `_Unreachable`."""
    errors = hf.utils
    where = f"{_endpoint(hf)}/{name.repo_id}"
    try:
        yield
    except Exception as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if _is_network_error(hf, e):
            raise _Unreachable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from e
        if writing and status == 401 and "invalid credentials" in str(getattr(e, "server_message", "")).lower():
            raise HubError(f"the Hugging Face Hub ({_endpoint(hf)}) rejected the token (invalid credentials): set "
                           f"HF_TOKEN to a valid token with write access, or run `hf auth login`.") from e
        if writing and (isinstance(e, errors.RepositoryNotFoundError) or status in (401, 403)):
            raise HubError(f"the Hugging Face Hub ({_endpoint(hf)}) refused to create or write {name.repo_id} "
                           f"({status}): use a token with write access to {name.repo_id.split('/')[0]} (set HF_TOKEN "
                           f"or run `hf auth login`).") from e
        token = "set HF_TOKEN or run `hf auth login`"
        answers = (  # the first class `e` is an instance of says what to do (a gated repository is a not-found one)
            (errors.GatedRepoError, f"{name.text} is a gated repository: accept its conditions at {where} and use a "
                                    f"token of that account ({token})."),
            (errors.RepositoryNotFoundError, f"{name.text} is neither a local path ({fileio.user_path(name.text)} does "
                                             f"not exist) nor a repository on the Hugging Face Hub ({where}): check "
                                             f"the name; a private repository needs a token with access to it "
                                             f"({token})."),
            (errors.RevisionNotFoundError, f"{name.text}: the repository {name.repo_id} has no revision {name.rev!r} "
                                           f"({where}); give one of its branches, tags or commits after '@', or leave "
                                           f"'@' out for {DEFAULT_REVISION}."),
            (errors.EntryNotFoundError, f"{name.text}: the repository {name.repo_id} has no file {filename!r} at "
                                        f"revision {name.rev} ({where}); check the path inside the repository."),
            (errors.HfHubHTTPError, f"{name.text}: the Hugging Face Hub ({where}) answered {status or 'an error'} "
                                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); check the name and "
                                    f"your token (HF_TOKEN)."),
        )
        message = next((text for kind, text in answers if isinstance(e, kind)), None)
        if message is None:
            raise
        raise HubError(message) from e


def _remote(hf: ModuleType, name: HubName) -> tuple[str, list[str]]:
    """(the commit the revision names now, the repository's files at it): one model-info request."""
    if _offline():
        raise _Unreachable("offline mode: HF_HUB_OFFLINE is set")
    with _answers(hf, name):
        info = hf.HfApi(endpoint=_endpoint(hf)).model_info(name.repo_id, revision=name.revision)
    return info.sha, [sibling.rfilename for sibling in info.siblings or []]


def _checkpoint_files(files: list[str]) -> str:
    shown = [f for f in files if f.endswith(_CHECKPOINT_SUFFIXES)]
    if not shown:
        return "it holds no checkpoint files"
    return f"its checkpoint files: {', '.join(shown[:8])}{', ...' if len(shown) > 8 else ''}"


def _download(hf: ModuleType, name: HubName, commit: str, files: list[str], *, vidjax_ok: bool = True
              ) -> pathlib.Path:
    """The files a conversion of `name` reads, downloaded into huggingface_hub's cache at `commit`: the checkpoint
    file, or the repository's snapshot folder holding config, weights, preprocessing and tokenizer files (or, with
    `vidjax_ok`, a vidjax checkpoint's vidjax.json, params/ and tokenizer/)."""
    def get(filename: str) -> pathlib.Path:
        # By the revision's name, as transformers downloads: huggingface_hub then records what it names (its
        # refs/), which its offline mode reads. Each file's commit is checked against the one asked about.
        with _answers(hf, name, filename):
            path = pathlib.Path(hf.hf_hub_download(name.repo_id, filename, revision=name.rev,
                                                   endpoint=_endpoint(hf), library_name="vidjax"))
        if _snapshot_commit(path) != commit:
            raise HubError(f"{name.text} changed while it was downloaded (revision {name.rev} moved from {commit} to "
                           f"{_snapshot_commit(path)}): load it again.")
        return path

    if name.filename is not None:
        if name.filename not in files:
            raise HubError(f"{name.text}: the repository {name.repo_id} has no file {name.filename!r} at revision "
                           f"{name.rev}; {_checkpoint_files(files)}.")
        return get(name.filename)
    if META_FILE in files:  # a vidjax checkpoint, as `python -m vidjax.push` uploads one: nothing to convert
        if not vidjax_ok:
            raise HubError(f"{name.text} already holds a vidjax checkpoint ({META_FILE}): there is nothing to convert; "
                           f"give the name wherever a checkpoint is taken (--checkpoint, --config.init_from, "
                           f"vidjax.pretrained.load).")
        for filename in files:
            if filename.startswith(("params/", "tokenizer/")):
                get(filename)
        return get(META_FILE).parent
    if "config.json" not in files:
        example = next((f for f in files if f.endswith(_CHECKPOINT_SUFFIXES)), None)
        if example is None:
            shown = f"{', '.join(files[:8])}{', ...' if len(files) > 8 else ''}" if files else "none"
            raise HubError(f"{name.text} holds nothing vidjax loads at revision {name.rev}: no save_pretrained model "
                           f"(config.json) and no checkpoint file ({', '.join(_CHECKPOINT_SUFFIXES)}); its files: "
                           f"{shown}. Check the repository name and revision.")
        raise HubError(f"{name.text} holds no save_pretrained model (no config.json at revision {name.rev}); "
                       f"{_checkpoint_files(files)}: load one as {name.repo_id}/{example}{_at(name)}.")
    config = get("config.json")
    _check_architecture(config, name)
    weights = next((w for w in _WEIGHTS if w in files), None)
    if weights is None:
        raise HubError(f"{name.text} has a config.json but no weights vidjax reads (model.safetensors or "
                       f"pytorch_model.bin, or a sharded index of them) at revision {name.rev}.")
    wanted = [f for f in _HF_FILES[1:] if f in files] + [weights]
    if weights.endswith(".index.json"):
        wanted += sorted(set(json.loads(get(weights).read_text())["weight_map"].values()))
    for filename in wanted:
        get(filename)
    return config.parent


def _check_architecture(config_path: pathlib.Path, name: HubName) -> None:
    """Refuses, before the weights are downloaded, a model whose architecture no converter reads."""
    config = json.loads(config_path.read_text())
    architectures = config.get("architectures") or []
    if not set(architectures) & set(supported()):
        found = ", ".join(architectures) or f"model_type {config.get('model_type')!r} without architectures"
        raise HubError(f"{name.text} holds a {found} model, an architecture vidjax does not convert; vidjax converts "
                       f"{', '.join(supported())}: pick a repository of one of these.")


def _cached_download(hf: ModuleType, name: HubName, why: str) -> tuple[str, pathlib.Path]:
    """(commit, path) of what huggingface_hub's cache holds for `name` at its revision, asking nobody."""
    try:
        if name.filename is not None:
            path = pathlib.Path(hf.hf_hub_download(name.repo_id, name.filename, revision=name.rev,
                                                   local_files_only=True))
        else:
            path = pathlib.Path(hf.snapshot_download(name.repo_id, revision=name.rev, local_files_only=True))
    except hf.utils.LocalEntryNotFoundError as e:
        fix = ("unset HF_HUB_OFFLINE and load it once with network access; later loads need none" if _offline() else
               f"check the network and HF_ENDPOINT ({_endpoint(hf)}), and load it once online; later loads need none")
        raise HubError(f"{name.text}: cannot reach the Hugging Face Hub ({why}) and no copy is cached (neither "
                       f"vidjax's conversion in {cache_dir() / name.folder} nor huggingface_hub's download): "
                       f"{fix}.") from e
    return _snapshot_commit(path), path


def _snapshot_commit(path: pathlib.Path) -> str:
    """The commit of a file or folder in huggingface_hub's cache (.../snapshots/<commit>/...)."""
    parts = path.parts
    return parts[len(parts) - 1 - parts[::-1].index("snapshots") + 1]


# ------------------------------------------------------------------------------------------- vidjax's cache


@contextlib.contextmanager
def _writing(path: pathlib.Path) -> Iterator[None]:
    """A cache that cannot be written is one line naming the variable that moves it."""
    try:
        yield
    except OSError as e:
        raise HubError(f"cannot write vidjax's Hub cache at {path} ({e}): set {ENV} to a writable folder.") from e


def _copy_checkpoint(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A vidjax checkpoint from huggingface_hub's snapshot (links into its blobs) into vidjax's cache, as files,
    renamed into place only when complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(src, tmp)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _converted_dir(root: pathlib.Path, commit: str, name: HubName) -> pathlib.Path:
    return root / commit / ("model" if name.filename is None else pathlib.Path("files", *name.filename.split("/")))


def _ref_path(root: pathlib.Path, revision: str) -> pathlib.Path:
    return root / "refs" / urllib.parse.quote(revision, safe="")


def _read_ref(root: pathlib.Path, revision: str) -> str | None:
    path = _ref_path(root, revision)
    return path.read_text().strip() if path.is_file() else None


def _write_ref(root: pathlib.Path, revision: str, commit: str) -> None:
    if revision != commit and _read_ref(root, revision) != commit:
        with _writing(root), fileio.atomic_output(_ref_path(root, revision)) as f:
            f.write(commit)
