"""Training checkpoints that survive Ctrl-C and kill -9: tensors in safetensors, scalars in JSON.

A checkpoint is two files in ``RUN_DIR/checkpoints/``: ``step-000001200.safetensors`` (model,
optimiser state, RNG states) and ``step-000001200.json`` (step, configuration, optimiser
hyper-parameters, byte size and sha256 of the tensors file). Each is written atomically
(``fileio.atomic_path``: temp file, fsync, rename) and the JSON goes last: it is the commit mark.
A checkpoint without its JSON, or whose tensors do not match the recorded hash, is not used. The
previous checkpoint is deleted only after the new one was read back and verified, so a run killed
at any instant leaves at least one good checkpoint (after the first save).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.fileio import _jsonable, atomic_path, file_sha256, write_json

FORMAT = "sslprobe-checkpoint"
_NAME = re.compile(r"^step-(\d{9})\.json$")


@dataclass(frozen=True)
class SaveEvery:
    """When to checkpoint besides the end: every ``steps`` steps and/or every ``minutes`` minutes."""

    steps: int | None = None
    minutes: float | None = None

    def due(self, *, step: int, last_step: int, elapsed_min: float) -> bool:
        """True when ``step`` (just completed) should be saved, given the last save and the minutes since."""
        if self.steps is not None and step - last_step >= self.steps:
            return True
        return self.minutes is not None and elapsed_min >= self.minutes


def parse_save_every(text: str) -> SaveEvery:
    """``"500"`` (steps), ``"10m"`` / ``"10min"`` (minutes), both as ``"500,10m"``, or ``"end"`` (only at the end)."""
    steps = minutes = None
    if text.strip().lower() != "end":
        for part in text.replace(" ", "").lower().split(","):
            m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|min)", part)
            if m and float(m.group(1)) > 0:
                minutes = float(m.group(1))
            elif part.isdigit() and int(part) > 0:
                steps = int(part)
            else:
                raise SSLProbeError(f"--save-every '{text}' not understood; use STEPS (500), MINUTES (10m), "
                                    "both (500,10m) or end")
    return SaveEvery(steps=steps, minutes=minutes)


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk: its files, step and the JSON state."""

    json_path: Path
    tensors_path: Path
    step: int
    state: dict[str, Any]


def save(directory: str | os.PathLike, *, step: int, tensors: Mapping[str, torch.Tensor],
         state: Mapping[str, Any]) -> Checkpoint:
    """Write checkpoint ``step`` (tensors + JSON state), verify it, then delete the older ones."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:09d}"
    tpath, jpath = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(tpath) as tmp:
        save_file(cpu, str(tmp), metadata={"format": FORMAT})
    record = {"format": FORMAT, "step": step, "tensors": tpath.name, "bytes": tpath.stat().st_size,
              "sha256": file_sha256(tpath), **state}
    write_json(jpath, record)
    ckpt = _verified(jpath)  # read back what is on disk before anything older goes
    if ckpt is None:
        raise SSLProbeError(f"checkpoint {jpath} did not verify after writing (disk full or failing?); "
                            "the previous checkpoint was kept")
    for old in directory.iterdir():
        m = re.match(r"^step-(\d{9})\.(json|safetensors)$", old.name)
        stale_tmp = old.name.startswith(".step-") and old.name.endswith(".tmp")  # left by a killed write
        if (m and int(m.group(1)) != step) or stale_tmp:
            old.unlink(missing_ok=True)
    return ckpt


def _verified(jpath: Path) -> Checkpoint | None:
    """The checkpoint if its JSON parses, names its own step's tensors file, and that file has the
    recorded size and sha256 and a readable safetensors header; else None."""
    from safetensors import safe_open

    try:
        state = json.loads(jpath.read_text())
        step = int(state["step"])
        name = f"step-{step:09d}"
        # Only our own file names: a JSON cannot point the loader at another file (a pickle, ../x).
        if jpath.name != f"{name}.json" or state.get("format") != FORMAT or state["tensors"] != f"{name}.safetensors":
            return None
        tpath = jpath.with_name(state["tensors"])
        if tpath.stat().st_size != state["bytes"] or file_sha256(tpath) != state["sha256"]:
            return None
        with safe_open(str(tpath), framework="pt") as f:
            f.keys()
        return Checkpoint(jpath, tpath, step, state)
    except Exception:  # noqa: BLE001  (any unreadable or forged checkpoint is simply not used)
        return None


def find_latest(directory: str | os.PathLike) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that verifies (size and sha256), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = sorted((int(m.group(1)) for p in directory.iterdir() if (m := _NAME.match(p.name))), reverse=True)
    for s in steps:
        ckpt = _verified(directory / f"step-{s:09d}.json")
        if ckpt is not None:
            return ckpt
    return None


def load_tensors(ckpt: Checkpoint, *, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint."""
    from safetensors.torch import load_file

    try:
        return load_file(str(ckpt.tensors_path), device=str(device))
    except Exception as e:  # noqa: BLE001  (changed on disk since it verified)
        raise SSLProbeError(f"checkpoint {ckpt.tensors_path} cannot be read ({type(e).__name__}); "
                            "delete it to resume from an older one, or start a new run") from None


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: obj}


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, current value)}`` where two configurations differ (compared as JSON)."""
    a, b = _flat(json.loads(json.dumps(_jsonable(saved)))), _flat(json.loads(json.dumps(_jsonable(current))))
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in ignore)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in keys
            if a.get(k, "<absent>") != b.get(k, "<absent>")}


def pack_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state as flat tensors (``optim.<param>.<name>``) + JSON (groups, scalar state)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                scalars.setdefault(str(pid), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unpack_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`pack_optimizer`, into an optimiser built the same way."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    """The global torch RNG states (CPU and every CUDA device)."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`rng_tensors` (CUDA states only where the device exists)."""
    torch.set_rng_state(tensors["rng.cpu"].cpu())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"rng.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"].cpu(), i)
