"""Declares the C extension only; everything else is in pyproject.toml.

The extension is Cython (coremachine_embedded/_core.pyx) over csrc/*.c, linked
against libsodium (found with pkg-config).  COREMACHINE_IMPL=python skips it.
"""
import os
import shlex
import subprocess

from setuptools import Extension, setup

CSRC = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".c"))


def pkg_config(flag, default):
    try:
        out = subprocess.run(["pkg-config", flag, "libsodium"], check=True,
                             capture_output=True, text=True).stdout
        return shlex.split(out)
    except (OSError, subprocess.CalledProcessError):
        return default


def extensions():
    if os.environ.get("COREMACHINE_IMPL", "").lower() == "python":
        return []
    from Cython.Build import cythonize
    cflags = ["-std=c99", "-D_FILE_OFFSET_BITS=64", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra"]
    if os.environ.get("COREMACHINE_WERROR"):
        cflags.append("-Werror")
    ext = Extension(
        "coremachine_embedded._core",
        sources=["coremachine_embedded/_core.pyx"] + CSRC,
        include_dirs=["csrc"] + [f[2:] for f in pkg_config("--cflags-only-I", [])],
        library_dirs=[f[2:] for f in pkg_config("--libs-only-L", [])],
        libraries=["sodium"],
        extra_compile_args=cflags,
        depends=[os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")],
    )
    return cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=extensions())
