"""Build and load the small C kernels at first use, cached per source and machine.

The kernels are plain C (no torch headers), so building one takes a second with the
system compiler and never pulls torch into a build environment. The shared library is
cached under ``$ADAN_CACHE_DIR`` (default ``~/.cache/adan``), keyed by a hash of the
source, the flags, the compiler and the machine, and written atomically so that
concurrent processes (e.g. distributed ranks) can race safely.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["BuildError", "load_library", "cache_dir"]

_FLAG_SETS = (  # tried in order: the first that compiles wins
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],  # no OpenMP (e.g. Apple clang): single-threaded
)
_COMMON = ["-std=gnu11", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math"]
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


class BuildError(RuntimeError):
    """No C compiler, or the kernel did not compile."""


def cache_dir() -> Path:
    root = os.environ.get("ADAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adan"
    )
    return Path(root)


def _compiler() -> str:
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None or shutil.which(cc.split()[0]) is None:
        raise BuildError("no C compiler found (set CC, or install gcc or clang)")
    return cc


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"the C compiler {cc!r} does not run: {exc}") from exc
    return out.splitlines()[0] if out else cc


KERNEL_DIR = Path(__file__).parent / "kernels"


def load_library(source: Path, include_dirs: tuple[Path, ...] = (KERNEL_DIR,)) -> ctypes.CDLL:
    """Compile ``source`` (once per machine) and load it with ctypes.

    Headers in ``include_dirs`` are on the include path and part of the cache key.
    """
    source = Path(source)
    with _lock:
        key = str(source)
        if key in _loaded:
            return _loaded[key]
        cc = _compiler()
        headers = sorted(h for d in include_dirs for h in Path(d).glob("*.h"))
        text = source.read_bytes() + b"".join(h.read_bytes() for h in headers)
        includes = [f"-I{d}" for d in include_dirs]
        ident = "|".join([_compiler_id(cc), platform.machine(), platform.system(), sys.version.split()[0]])
        errors = []
        for flags in _FLAG_SETS:
            digest = hashlib.sha256(text + repr((flags, _COMMON, ident)).encode()).hexdigest()[:16]
            target = cache_dir() / f"{source.stem}-{digest}.so"
            if not target.exists():
                err = _compile(cc, source, target, [*flags, *includes])
                if err:
                    errors.append(f"{' '.join(flags)}: {err}")
                    continue
            lib = ctypes.CDLL(str(target))
            _loaded[key] = lib
            return lib
        raise BuildError(f"could not compile {source.name}:\n" + "\n".join(errors))


def _compile(cc: str, source: Path, target: Path, flags: list[str]) -> str | None:
    """Compile to a temporary file and rename it into place; return an error text or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [*cc.split(), *flags, *_COMMON, str(source), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip()[-2000:]
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
