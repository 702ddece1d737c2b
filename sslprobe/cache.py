"""A content-addressed embedding store: a fingerprint picks the store, image-byte hashes pick the rows.

Layout under the cache directory::

    <store id>/store.json                 the fingerprint (JSON) and when the store was made
    <store id>/used                       its mtime is the last time a run used the store
    <store id>/shards/<unique>.safetensors  ``features`` (N, D) and ``keys`` (N, 32) uint8 sha256 digests

The store id is a hash of everything that changes the numbers (``Fingerprint``), so a different
model, weights file, preprocessing, layer, pooling or dtype can never read another's rows. Shards
are immutable and written atomically under unique names, so any number of processes (several
runs, torchrun ranks) can add rows to one store at once without locks. Every shard is validated
before its rows are used (name, header, dtypes, shapes, row count, checksum); one that fails is
ignored and its rows are recomputed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslprobe.errors import SSLProbeError

if TYPE_CHECKING:  # torch is imported where tensors are used, not when the module is
    import torch

FORMAT = "sslprobe-cache"
STORE_FILE = "store.json"
KEY_BYTES = 32  # sha256 digest
_STORE_ID = re.compile(r"^[0-9a-f]{24}$")
_SHARD_NAME = re.compile(r"^[0-9a-zA-Z_-]{1,120}\.safetensors$")


def default_cache_dir() -> Path:
    """``$SSLPROBE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sslprobe``, else ``~/.cache/sslprobe``."""
    if os.environ.get("SSLPROBE_CACHE_DIR"):
        return Path(os.environ["SSLPROBE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslprobe"


def content_key(data: bytes) -> bytes:
    """The row key of an image: the sha256 digest of its encoded bytes (32 bytes)."""
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Fingerprint:
    """Everything that changes the numbers of an embedding; its hash names the store.

    ``weights`` is ``random``, ``random-rescaled``, ``pretrained``, ``pixels`` or ``file``;
    ``weights_id`` pins it down (seed, timm hub tag, or sha256 of the weights). ``preprocessing``
    is canonical JSON (size, crop, interpolation, mean/std, stem, decode). ``compute`` is the
    arithmetic the forward pass ran in (``float32`` or ``bfloat16`` autocast).
    """

    model: str
    weights: str
    weights_id: str
    preprocessing: str
    layer: str
    pool: str
    dtype: str
    compute: str
    sslprobe_major: str

    @property
    def store_id(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def _check_store_id(store_id: str) -> str:
    # Store ids come from the command line (`cache clear --store`) and from directory names; anything
    # but 24 hex digits (e.g. "../../x") is refused so no path can leave the cache directory.
    if not _STORE_ID.match(store_id):
        raise SSLProbeError(f"'{store_id}' is not a store id (24 hex digits, see `sslprobe cache info`)")
    return store_id


@dataclass
class Shard:
    """One validated shard: its path, its row keys and (loaded on demand) its features."""

    path: Path
    keys: list[bytes]
    dim: int
    checksum: str


class Store:
    """One fingerprint's rows: read validated shards, add new ones atomically."""

    def __init__(self, root: Path, fingerprint: Fingerprint) -> None:
        self.fingerprint = fingerprint
        self.root = Path(root) / _check_store_id(fingerprint.store_id)
        self.shard_dir = self.root / "shards"
        self.invalid: list[str] = []  # names of shards that failed validation in this session
        self._index: dict[bytes, tuple[Shard, int]] = {}
        self._loaded: dict[Path, torch.Tensor | None] = {}  # shard → its features (None: failed validation)

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, fingerprint: Fingerprint) -> Store:
        """Create (if needed) and open the store for ``fingerprint`` under ``cache_dir``."""
        from sslprobe.fileio import write_json

        store = cls(Path(cache_dir), fingerprint)
        if store.root.is_symlink() or store.shard_dir.is_symlink():
            raise SSLProbeError(f"cache store '{store.root}' is a symbolic link, which sslprobe never follows; "
                                "delete it or pass another --cache-dir")
        try:
            store.shard_dir.mkdir(parents=True, exist_ok=True)
            meta = store.root / STORE_FILE
            if _read_store_file(meta) != asdict(fingerprint):
                write_json(meta, {"format": FORMAT, "store": fingerprint.store_id, "created": time.time(),
                                  "fingerprint": asdict(fingerprint)})
            (store.root / "used").touch()
            for tmp in _stale_temp_files(store.shard_dir):  # left by writers killed mid-shard
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise SSLProbeError(f"cannot use the cache directory '{cache_dir}' ({e.strerror or e}); "
                                "pass a writable --cache-dir or --no-cache") from None
        return store

    def refresh(self) -> None:
        """(Re)read the shard headers: every valid row key, first valid shard wins."""
        self._index.clear()
        for name in sorted(os.listdir(self.shard_dir)):
            if not _SHARD_NAME.match(name):
                continue  # temp files of writers in flight, and anything else that isn't ours
            shard = _read_header(self.shard_dir / name, self.fingerprint.dtype, store=self.fingerprint.store_id)
            if shard is None:
                self._reject(name)
                continue
            for row, key in enumerate(shard.keys):
                self._index.setdefault(key, (shard, row))

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def keys(self) -> set[bytes]:
        return set(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def get(self, keys: Sequence[bytes]) -> tuple[torch.Tensor, list[bool]]:
        """Features (len(keys), D) for known keys and a found-mask; rows of bad shards read as missing."""
        import torch

        found = [False] * len(keys)
        rows: list[torch.Tensor | None] = [None] * len(keys)
        for i, key in enumerate(keys):
            hit = self._index.get(key)
            if hit is None:
                continue
            feats = self._features(hit[0])
            if feats is not None:
                rows[i], found[i] = feats[hit[1]], True
        dim = next((r.shape[0] for r in rows if r is not None), 0)
        out = torch.stack([r for r in rows if r is not None]) if dim else torch.empty(0, 0)
        return out, found

    def _features(self, shard: Shard) -> torch.Tensor | None:
        if shard.path in self._loaded:
            return self._loaded[shard.path]
        feats = _read_features(shard, self.fingerprint.dtype)
        if feats is None:  # checksum or body failed: forget every row it claimed, recompute them
            self._reject(shard.path.name)
            for k in shard.keys:
                if self._index.get(k, (None,))[0] is shard:
                    del self._index[k]
        self._loaded[shard.path] = feats
        return feats

    def _reject(self, name: str) -> None:
        self.invalid.append(name)

    def write_shard(self, keys: Sequence[bytes], features: torch.Tensor, *, tag: str = "") -> Path:
        """Write one immutable shard atomically under a name no other writer can pick."""
        import torch
        from safetensors.torch import save_file

        from sslprobe.fileio import atomic_path

        feats = features.to(getattr(torch, self.fingerprint.dtype)).contiguous()  # (N, D)
        if feats.ndim != 2 or feats.shape[0] != len(keys) or any(len(k) != KEY_BYTES for k in keys):
            raise ValueError(f"shard rows disagree: {tuple(feats.shape)} features for {len(keys)} keys")
        key_t = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).reshape(len(keys), KEY_BYTES)
        name = f"{time.time_ns():x}-{os.getpid()}-{tag or 'r0'}-{secrets.token_hex(4)}.safetensors"
        meta = {"format": FORMAT, "store": self.fingerprint.store_id, "rows": str(len(keys)),
                "dim": str(feats.shape[1]), "dtype": self.fingerprint.dtype,
                "checksum": _checksum(key_t, feats)}
        path = self.shard_dir / name
        with atomic_path(path) as tmp:
            save_file({"features": feats, "keys": key_t}, str(tmp), metadata=meta)
        return path


def _checksum(keys: torch.Tensor, feats: torch.Tensor) -> str:
    """sha256 over the key bytes and the raw feature bytes (catches flipped bits the header can't)."""
    import torch

    h = hashlib.sha256()
    h.update(keys.numpy().tobytes())
    h.update(feats.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_store_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data.get("fingerprint") if data.get("format") == FORMAT else None
    except (OSError, ValueError, AttributeError):
        return None


def _regular_file(path: Path) -> bool:
    # No symlinks: a link planted in the store could point anywhere on the machine.
    try:
        return path.is_file() and not path.is_symlink()
    except OSError:
        return False


def _read_header(path: Path, dtype: str, *, store: str | None = None) -> Shard | None:
    """The keys of a shard whose header, metadata, dtypes and shapes agree; None if anything is off."""
    from safetensors import safe_open

    if not _regular_file(path):
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if set(f.keys()) != {"features", "keys"} or meta.get("format") != FORMAT:
                return None
            if store is not None and meta.get("store") != store:  # copied in from another store
                return None
            fs, ks = f.get_slice("features"), f.get_slice("keys")
            n, dim = int(meta["rows"]), int(meta["dim"])
            if (fs.get_shape() != [n, dim] or ks.get_shape() != [n, KEY_BYTES] or fs.get_dtype() != _ST_DTYPES[dtype]
                    or ks.get_dtype() != "U8" or meta.get("dtype") != dtype or n < 1):
                return None
            key_t = f.get_tensor("keys")
    except Exception:  # noqa: BLE001 - truncated, garbage, wrong metadata types: never trusted
        return None
    raw = key_t.numpy().tobytes()
    return Shard(path, [raw[i:i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)], dim, meta.get("checksum", ""))


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _read_features(shard: Shard, dtype: str) -> torch.Tensor | None:
    from safetensors.torch import load_file

    try:
        t = load_file(str(shard.path))
        keys, feats = t["keys"], t["features"]
    except Exception:  # noqa: BLE001 - any failure means "not valid"
        return None
    if feats.shape != (len(shard.keys), shard.dim) or _checksum(keys, feats) != shard.checksum:
        return None
    if keys.numpy().tobytes() != b"".join(shard.keys):  # replaced between header and body read
        return None
    return feats


# ---------------------------------------------------------------------------- inspect and prune


def list_stores(cache_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One summary per store: id, fingerprint, rows, shards, bytes, last used (unix time)."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    out = []
    for name in sorted(os.listdir(root)):
        d = root / name
        if not _STORE_ID.match(name) or not d.is_dir() or d.is_symlink():
            continue
        fp = _read_store_file(d / STORE_FILE) or {}
        rows, shards, size = 0, 0, 0
        shard_dir = d / "shards"
        for f in (sorted(os.listdir(shard_dir)) if shard_dir.is_dir() else []):
            p = shard_dir / f
            if not _regular_file(p):
                continue
            size += p.stat().st_size
            if _SHARD_NAME.match(f):
                s = _read_header(p, fp.get("dtype", "float32"), store=name)
                if s is not None:
                    rows, shards = rows + len(s.keys), shards + 1
        used = d / "used"
        last = used.stat().st_mtime if used.exists() else d.stat().st_mtime
        out.append({"store": name, "model": fp.get("model"), "weights": fp.get("weights"),
                    "weights_id": fp.get("weights_id"), "layer": fp.get("layer"), "pool": fp.get("pool"),
                    "dtype": fp.get("dtype"), "rows": rows, "shards": shards, "bytes": size,
                    "last_used": last, "fingerprint": fp})
    return out


def clear_stores(cache_dir: str | os.PathLike, *, store: str | None = None, all_stores: bool = False,
                 older_than_days: float | None = None) -> list[str]:
    """Delete stores (one by id, all, or those unused for N days); returns the deleted ids."""
    if sum(x is not None and x is not False for x in (store, all_stores or None, older_than_days)) != 1:
        raise SSLProbeError("say what to clear: exactly one of --store ID, --all or --older-than DAYS")
    if older_than_days is not None and older_than_days < 0:
        raise SSLProbeError(f"--older-than must be ≥ 0 days (got {older_than_days})")
    root = Path(cache_dir)
    if store is not None:
        _check_store_id(store)
        if not (root / store).is_dir():
            raise SSLProbeError(f"no store '{store}' in '{root}'; see `sslprobe cache info`")
    now = time.time()
    gone = []
    for s in list_stores(root):
        if (store is not None and s["store"] != store) or (
                older_than_days is not None and now - s["last_used"] < older_than_days * 86400):
            continue
        shutil.rmtree(root / s["store"], ignore_errors=True)
        gone.append(s["store"])
    return gone


def _stale_temp_files(shard_dir: Path, *, older_than_s: float = 86400) -> Iterable[Path]:
    """Temp files of writers that died long ago (a live writer's are seconds old)."""
    now = time.time()
    for p in list(shard_dir.glob(".*.tmp")):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > older_than_s:
                yield p
