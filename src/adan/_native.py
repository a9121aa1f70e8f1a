"""Build and load the small C kernels, and the C++ host helper, at first use, cached per
source and machine.

The kernels are plain C (no torch headers), so building one takes a second with the
system compiler and never pulls torch into a build environment. The host helper
(``kernels/adan_host.cpp``, :func:`load_extension`) is a Python extension module built
against the installed torch's headers, in 12-13 s on the 2-core CI machine, once per machine and torch
version; the CPU launchers work without it, more slowly (see :mod:`adan.kernels.cpu`). A
shared library is
cached under ``$ADAN_CACHE_DIR`` (default ``~/.cache/adan``), keyed by a hash of the
source, the flags, the compiler and the CPU (``-march=native`` resolves to a different
target on another CPU, so a cache shared between machines, e.g. an NFS home, keeps one
library per CPU). A library is written atomically (fsync, then rename) with its size and
SHA-256 beside it, and verified before it is loaded: a truncated or corrupted file is
rebuilt, never mapped (a short ``.so`` would kill the process with SIGBUS).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from adan._codes import c_defines

__all__ = ["BuildError", "load_library", "load_extension", "cache_dir"]

_FLAG_SETS = (  # tried in order: the first that compiles wins
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],  # no OpenMP (e.g. Apple clang): single-threaded
)
_COMMON = ["-std=gnu11", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math"]
_CXX_FLAG_SETS = (["-O2", "-std=c++20"], ["-O2", "-std=c++17"])  # what the torch headers need, newest first
_lock = threading.Lock()
_loaded: dict[str, Any] = {}


class BuildError(RuntimeError):
    """No C compiler, or the kernel did not compile."""


def cache_dir() -> Path:
    root = os.environ.get("ADAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adan"
    )
    return Path(root)


def _compiler(variable: str = "CC", names: tuple[str, ...] = ("cc", "gcc", "clang"), language: str = "C") -> str:
    cc = os.environ.get(variable) or next((c for c in names if shutil.which(c)), None)
    if cc is None or shutil.which(cc.split()[0]) is None:
        raise BuildError(f"no {language} compiler found (set {variable}, or install {' or '.join(names[1:])})")
    return cc


def cxx_compiler() -> str:
    """The C++ compiler the host helper is built with (``$CXX``, else c++, g++ or clang++)."""
    return _compiler("CXX", ("c++", "g++", "clang++"), "C++")


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"the C compiler {cc!r} does not run: {exc}") from exc
    return out.splitlines()[0] if out else cc


@functools.lru_cache(maxsize=None)
def _cpu_id(cc: str) -> str:
    """The CPU as the compiler sees it for ``-march=native``: the resolved target and its
    feature flags (``cc -### -march=native``), and the kernel's CPU model and flags."""
    parts = []
    try:
        proc = subprocess.run(
            [*cc.split(), "-march=native", "-###", "-x", "c", "-c", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        tokens = (proc.stderr + proc.stdout).replace('"', " ").split()
        keep = {"-target-cpu", "-target-feature"}  # clang writes the target as option pairs
        parts = [t for i, t in enumerate(tokens) if t.startswith("-m") or (i and tokens[i - 1] in keep)]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    parts.append(" ".join(line.split()))
                if line.strip() == "":
                    break  # the first processor describes them all
    except OSError:
        pass
    return hashlib.sha256("|".join(parts or [platform.processor()]).encode()).hexdigest()[:16]


def _meta_path(target: Path) -> Path:
    return target.with_suffix(".json")


def _verified(target: Path) -> bool:
    """The library exists and matches the size and SHA-256 recorded when it was built."""
    try:
        meta = json.loads(_meta_path(target).read_text())
        data = target.read_bytes()
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("size") == len(data) and meta.get("sha256") == hashlib.sha256(data).hexdigest()


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
        defines = [f"-D{d}" for d in c_defines()]  # the kernels' integer codes, from one Python enum
        includes = [f"-I{d}" for d in include_dirs]
        ident = "|".join([_compiler_id(cc), platform.machine(), platform.system(), sys.version.split()[0]])

        def cache_key(flags: list[str]) -> str:
            return repr((flags, _COMMON, defines, ident, _cpu_id(cc) if "-march=native" in flags else ""))

        def command(flags: list[str]) -> list[str]:
            return [*cc.split(), *flags, *includes, *defines, *_COMMON, str(source), "-lm"]

        lib = ctypes.CDLL(str(_build(source, text, _FLAG_SETS, cache_key, command)))
        _loaded[key] = lib
        return lib


def _build(
    source: Path, text: bytes, flag_sets: tuple, cache_key: Callable[[list[str]], str], command: Callable[[list[str]], list[str]]
) -> Path:
    """The cached library built from ``source`` (``text``: it and what it includes) with the
    first of ``flag_sets`` that compiles: ``command(flags)`` (without an output) builds it,
    under a name hashed from ``text`` and ``cache_key(flags)``; a library already cached there
    and verified is taken as it is."""
    errors = []
    for flags in flag_sets:
        digest = hashlib.sha256(text + cache_key(flags).encode()).hexdigest()[:16]
        target = cache_dir() / f"{source.stem}-{digest}.so"
        if _verified(target):
            return target
        err = _compile(command(flags), target, source, flags)  # absent, truncated or corrupted: (re)build it
        if err is None:
            return target
        errors.append(f"{' '.join(flags)}: {err}")
    raise BuildError(f"could not compile {source.name}:\n" + "\n".join(errors))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_extension(source: Path, name: str) -> ModuleType:
    """Compile the C++ Python extension module ``name`` from ``source`` against the
    installed torch (once per machine, torch and Python) and import it."""
    source = Path(source)
    with _lock:
        key = f"{source}:{name}"
        if key in _loaded:
            return _loaded[key]
        import torch  # (the extension is built for this torch: its headers, libraries and ABI)

        cxx = cxx_compiler()
        root = Path(torch.__file__).parent
        lib_dir = root / "lib"
        python_include = sysconfig.get_paths()["include"]
        common = [
            "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-I{root / 'include'}", f"-I{python_include}", f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}",
        ]  # fmt: skip
        if platform.system() == "Darwin":  # (Python's symbols resolve when the module loads, as setuptools links)
            common += ["-undefined", "dynamic_lookup"]
        libs = ["-ltorch_python", "-ltorch_cpu", "-lc10"]
        ident = "|".join([_compiler_id(cxx), platform.machine(), platform.system(), sys.version, torch.__version__,
                          str(torch.version.git_version), str(root)])  # fmt: skip

        def cache_key(flags: list[str]) -> str:
            return repr((flags, common, ident))

        def command(flags: list[str]) -> list[str]:
            return [*cxx.split(), *flags, *common, str(source), *libs]

        target = _build(source, source.read_bytes(), _CXX_FLAG_SETS, cache_key, command)
        loader = importlib.machinery.ExtensionFileLoader(name, str(target))
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, target, loader=loader))
        try:
            loader.exec_module(module)
        except ImportError as exc:
            raise BuildError(f"{target.name} does not load: {exc}") from exc
        _loaded[key] = module
        return module


def _compile(command: list[str], target: Path, source: Path, flags: list[str]) -> str | None:
    """Run the compiler ``command`` (which names no output) into a temporary file, then put
    it and its size and checksum in place atomically and durably; return an error text or
    None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([*command, "-o", tmp], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip()[-2000:]
        data = Path(tmp).read_bytes()
        _write_atomic(target, data)  # a fresh inode: a process that mapped the old file keeps it
        meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "source": source.name, "flags": flags}
        _write_atomic(_meta_path(target), json.dumps(meta).encode())
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
