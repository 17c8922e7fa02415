"""Run folders on object storage (any fsspec URL: s3:// — MinIO too —,
gs://, az://, …) for sharded runs whose workers share no filesystem.

A flow given a recipe URL (`s3://bucket/runs/x/shards/shard-0/recipe.yaml`)
runs on a local copy of the recipe's folder, `$SFTMILL_CACHE/remote/<hash>`,
pulled before the flow and pushed after it (also when it fails):

- `.sftmill-sync` names the folder's last full push.  A local copy with the
  same name is at least as new as the remote folder (this machine pushed or
  pulled it, then went on — perhaps until killed) and is kept; otherwise it
  is replaced by the remote folder.
- While the flow runs, every finished LLM call also goes to a ledger beside
  the call journal (`<db>.calls.ledger.jsonl`), whose new lines are uploaded
  every `SFTMILL_SYNC_SECONDS` (2) as `ledger/<attempt>-<n>.jsonl`.  A pull
  hands every segment to the journal (inserted by call ID: nothing counted
  twice), so a run killed on one machine and retried on another sends again
  only the calls that finished in its last seconds; on the same machine, none.
- A push closes the run database (the journal merged into it), uploads the
  files that changed, then a new `.sftmill-sync`, then deletes the segments.

Credentials and endpoints come from the environment as fsspec and the
storage's SDK read them (for MinIO: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Iterator

from sftmill.core.recipe import DB_FILE, cache_dir
from sftmill.core.store import LEDGER, MERGING, Store

SYNC = ".sftmill-sync"
MANIFEST = ".sftmill-manifest.json"  # size and mtime of each file at the last pull/push
LEDGER_DIR = "ledger"


def is_remote(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path) and not str(path).startswith("file://")


def local_dir(folder_url: str) -> Path:
    """Where this machine keeps its copy of a remote run folder."""
    return cache_dir() / "remote" / hashlib.sha256(folder_url.rstrip("/").encode()).hexdigest()[:16]


def _fs(folder_url: str):
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(folder_url.rstrip("/"))
    fs.invalidate_cache()  # other machines write here too: no listing from memory
    return fs, root.rstrip("/")


def _remote_files(fs, root: str) -> list[str]:
    """Paths under `root`, relative to it (nothing if it does not exist)."""
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return []
    return sorted(p[len(root) + 1:] for p in found if p.startswith(root + "/"))


def _local_files(local: Path) -> dict[str, list[int]]:
    """Relative path → [size, mtime] of the files a push uploads."""
    stamps = {}
    for p in sorted(local.rglob("*")):
        if p.is_file() and p.name not in (SYNC, MANIFEST) and not p.name.endswith(LEDGER):
            stat = p.stat()
            stamps[str(p.relative_to(local))] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def pull(folder_url: str) -> Path:
    """The local copy of a remote run folder, brought up to date (see the
    module's docstring); the ledger's segments left for the journal."""
    fs, root = _fs(folder_url)
    local = local_dir(folder_url)
    remote_files = _remote_files(fs, root)
    if not remote_files:
        raise FileNotFoundError(f"{folder_url}: no such folder (or it is empty)")
    remote_sync = fs.cat_file(f"{root}/{SYNC}").decode() if SYNC in remote_files else None
    local_sync = (local / SYNC).read_text() if (local / SYNC).exists() else None
    if local_sync is None or local_sync != remote_sync:
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        for rel in remote_files:
            if not rel.startswith(LEDGER_DIR + "/") and rel != SYNC:
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{root}/{rel}", str(local / rel))
        if remote_sync is not None:
            (local / SYNC).write_text(remote_sync)
        (local / MANIFEST).write_text(json.dumps(_local_files(local)))
    segments = [rel for rel in remote_files if rel.startswith(LEDGER_DIR + "/") and rel.endswith(".jsonl")]
    if segments:  # replayed by the journal when the run database is next opened
        with open(local / (DB_FILE + MERGING), "ab") as sink:
            for rel in segments:
                data = fs.cat_file(f"{root}/{rel}")
                sink.write(data if data.endswith(b"\n") else data + b"\n")
    return local


def push(local: Path, folder_url: str) -> None:
    """Upload the files of `local` that changed since the last pull/push,
    then mark the folder with a new sync name and drop its ledger segments."""
    Store.close_all()  # the database complete on disk, the journal merged into it
    fs, root = _fs(folder_url)
    before = json.loads((local / MANIFEST).read_text()) if (local / MANIFEST).exists() else {}
    now = _local_files(local)
    for rel, stamp in now.items():
        if before.get(rel) != stamp:
            fs.makedirs(f"{root}/{rel}".rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(local / rel), f"{root}/{rel}")
    for rel in set(before) - set(now):  # e.g. a journal file merged away
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{root}/{rel}")
    name = uuid.uuid4().hex
    fs.pipe_file(f"{root}/{SYNC}", name.encode())
    (local / SYNC).write_text(name)
    (local / MANIFEST).write_text(json.dumps(now))
    for rel in _remote_files(fs, root):
        if rel.startswith(LEDGER_DIR + "/"):
            fs.rm_file(f"{root}/{rel}")


class _LedgerUploader(threading.Thread):
    """Uploads the ledger's new complete lines every `every` seconds."""

    def __init__(self, ledger: Path, folder_url: str, every: float):
        super().__init__(name="sftmill-ledger", daemon=True)
        self.ledger, self.every, self.folder_url = ledger, every, folder_url
        self.attempt, self.sent, self.n = uuid.uuid4().hex[:12], 0, 0
        self.stopping = threading.Event()

    def upload(self) -> None:
        with open(self.ledger, "rb") as f:
            f.seek(self.sent)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]  # whole lines only
        if data:
            fs, root = _fs(self.folder_url)
            fs.pipe_file(f"{root}/{LEDGER_DIR}/{self.attempt}-{self.n:06d}.jsonl", data)
            self.sent, self.n = self.sent + len(data), self.n + 1

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            with contextlib.suppress(Exception):  # storage away for a moment: the next round sends it
                self.upload()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.upload()


@contextlib.contextmanager
def synced_folder(folder_url: str) -> Iterator[Path]:
    """The local copy of a remote run folder for the time of the block,
    its LLM calls uploaded as they finish and the folder pushed at the end."""
    local = pull(folder_url)
    ledger = local / (DB_FILE + LEDGER)
    ledger.write_bytes(b"")  # the journal writes every finished call here too
    uploader = _LedgerUploader(ledger, folder_url, float(os.environ.get("SFTMILL_SYNC_SECONDS", "2")))
    uploader.start()
    try:
        yield local
    finally:
        uploader.stop()
        push(local, folder_url)


@contextlib.contextmanager
def local_recipe(recipe_path: str, write: bool = True) -> Iterator[str]:
    """A recipe path to run on: a remote recipe's synced local copy, or the
    path itself.  `write=False`: only read there — pulled, never pushed."""
    if not is_remote(recipe_path):
        yield recipe_path
        return
    folder, name = recipe_path.rstrip("/").rsplit("/", 1)
    if not write:
        yield str(pull(folder) / name)
        return
    with synced_folder(folder) as local:
        yield str(local / name)


@contextlib.contextmanager
def local_recipes(recipe_paths: list[str], write: bool = True) -> Iterator[list[str]]:
    """`local_recipe` for several recipes at once (a merge across shards)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(local_recipe(p, write)) for p in recipe_paths]


def put_files(files: list[Path], folder_url: str) -> None:
    """Upload files (a merged dataset and its card) into a remote folder."""
    fs, root = _fs(folder_url)
    fs.makedirs(root, exist_ok=True)
    for path in files:
        fs.put_file(str(path), f"{root}/{path.name}")
