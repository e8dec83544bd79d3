"""Declares the C extension and ships the board profiles; everything else is in
pyproject.toml.

The extension is Cython (coremachine_embedded/_core.pyx) over csrc/*.c, linked
against libsodium (found with pkg-config), and _speedups.pyx (C twins of two
hot Python functions of the action path).  COREMACHINE_IMPL=python skips them.
The TOML profiles in boards/profiles are copied into the built package
(coremachine_embedded/board_profiles) so an installed package finds them.
"""
import glob
import os
import shlex
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

CSRC = sorted(glob.glob(os.path.join("csrc", "*.c")))


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
        depends=glob.glob(os.path.join("csrc", "*.h")),
    )
    speedups = Extension("coremachine_embedded._speedups",
                         sources=["coremachine_embedded/_speedups.pyx"],
                         extra_compile_args=cflags)
    return cythonize([ext, speedups], compiler_directives={"language_level": "3"}, quiet=True)


class BuildWithProfiles(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "coremachine_embedded", "board_profiles")
        os.makedirs(target, exist_ok=True)
        for path in glob.glob(os.path.join("boards", "profiles", "*.toml")):
            shutil.copy(path, target)


setup(ext_modules=extensions(), cmdclass={"build_py": BuildWithProfiles})
