"""Declares the C extension and ships the board profiles; everything else is in
pyproject.toml.

The extension is Cython (coremachine_embedded/_core.pyx) over csrc/*.c, linked
against libsodium (found with pkg-config), and _speedups.pyx (C twins of two
hot Python functions of the action path).  COREMACHINE_IMPL at build time:
``python`` builds no extension; ``c`` requires it; unset (or ``auto``) builds it
when a C compiler, the Python headers and the libsodium headers are there, and
otherwise installs the pure-Python backend, printing one line that says why (the
same reason is stored next to the package, and the import warning repeats it).
The TOML profiles in boards/profiles are copied into the built package
(coremachine_embedded/board_profiles) so an installed package finds them.
"""
import contextlib
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError

# pyproject.toml states its licence as PEP 639 does (license = "MIT"), which
# setuptools reads from 77 on; older ones (Debian 12 has 66) stop with a
# schema error that does not say this.  pip's build environment and `make`'s
# .venv have a new one.
if int(setuptools.__version__.split(".")[0]) < 77:
    raise SystemExit(
        "coremachine_embedded: setup.py needs setuptools >= 77 (pyproject.toml's license is a "
        "PEP 639 expression); %s has setuptools %s. Use `make build` (its .venv has one), "
        "`pip install .` (pip's build environment fetches one), or in a venv: "
        "pip install 'setuptools>=77'" % (sys.executable, setuptools.__version__))

CSRC = sorted(glob.glob(os.path.join("csrc", "*.c")))
IMPL = os.environ.get("COREMACHINE_IMPL", "auto").strip().lower() or "auto"
# Read by coremachine_embedded/_backend.py: why this install has no C extension.
NOTE = "_no_extension.txt"
# What each missing piece is called in the one line, and how to get it (Debian names).
PROBES = (
    ("", "no working C compiler", "apt-get install gcc"),
    ("#include <Python.h>\n", "no Python headers (Python.h)", "apt-get install python3-dev"),
    ("#include <sodium.h>\n", "no libsodium headers (sodium.h)", "apt-get install libsodium-dev"),
)


def pkg_config(flag, default):
    try:
        out = subprocess.run(["pkg-config", flag, "libsodium"], check=True,
                             capture_output=True, text=True).stdout
        return shlex.split(out)
    except (OSError, subprocess.CalledProcessError):
        return default


def without_extension(reason, fix):
    """The one line; with COREMACHINE_IMPL=c a build error instead."""
    if IMPL == "c":
        raise SystemExit("COREMACHINE_IMPL=c but the C extension cannot be built: %s (%s)"
                         % (reason, fix))
    print("coremachine_embedded: installing the pure-Python backend without the C extension: "
          "%s. For the C backend: %s, then reinstall." % (reason, fix), file=sys.stderr,
          flush=True)


def extensions():
    if IMPL == "python":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        without_extension("Cython is not installed", "pip install Cython")
        return []
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


@contextlib.contextmanager
def quiet_fds():
    """Silence the compiler's own messages during a probe (fd level)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


class BuildExtOrFallBack(build_ext):
    """Builds the extension, or (COREMACHINE_IMPL auto) leaves it out when a
    probe compile shows that the compiler or a header is missing."""

    def build_extensions(self):
        core = next((e for e in self.extensions if e.name.endswith("._core")), None)
        if core is not None:
            note = os.path.join(os.path.dirname(self.get_ext_fullpath(core.name)), NOTE)
            missing = self.first_missing(core)
            if missing is None:
                if os.path.exists(note):
                    os.remove(note)
            else:
                # _speedups alone is no C backend: the pure one is installed whole.
                reason, fix = missing
                without_extension(reason, fix)
                for ext in list(self.extensions):
                    self.extensions.remove(ext)
                    stale = self.get_ext_fullpath(ext.name)  # from an earlier build
                    if os.path.exists(stale):
                        os.remove(stale)
                os.makedirs(os.path.dirname(note), exist_ok=True)
                with open(note, "w") as f:
                    f.write("%s (%s, then reinstall)\n" % (reason, fix))
        super().build_extensions()

    def first_missing(self, ext):
        """(what, how to get it) for the first probe that does not compile, or None."""
        compiler = self.compiler.compiler_so[0] if hasattr(self.compiler, "compiler_so") \
            else "cc"
        with tempfile.TemporaryDirectory() as tmp:
            for number, (source, what, fix) in enumerate(PROBES):
                path = os.path.join(tmp, "probe%d.c" % number)
                with open(path, "w") as f:
                    f.write(source + "int cm_probe(void) { return 0; }\n")
                try:
                    with quiet_fds():
                        self.compiler.compile([path], output_dir=tmp,
                                              include_dirs=ext.include_dirs)
                except CompileError:
                    if number == 0:
                        where = shutil.which(compiler)
                        what = ("no C compiler (%s not found)" % compiler if where is None
                                else "the C compiler %s does not work" % where)
                    return what, fix
        return None


class BuildWithProfiles(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "coremachine_embedded", "board_profiles")
        os.makedirs(target, exist_ok=True)
        for path in glob.glob(os.path.join("boards", "profiles", "*.toml")):
            shutil.copy(path, target)


setup(ext_modules=extensions(),
      cmdclass={"build_py": BuildWithProfiles, "build_ext": BuildExtOrFallBack})
