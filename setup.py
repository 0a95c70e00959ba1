"""Build of the C extension ``bu_osprofiler._core`` from ``ext/``.

Environment switches (all optional):

* ``BU_OSPROFILER_NO_WERROR=1``  do not turn warnings into errors (for unusual compilers).
* ``BU_OSPROFILER_SANITIZE=1``   build with ``-fsanitize=address,undefined`` (CI variant).
* ``BU_OSPROFILER_DEBUG=1``      build with ``-O0 -g``.
"""
import glob
import os

from setuptools import Extension, setup

cflags = ["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
          "-Wno-cast-function-type", "-D_GNU_SOURCE", "-fvisibility=hidden"]
ldflags = ["-lpthread"]
if os.environ.get("BU_OSPROFILER_NO_WERROR") != "1":
    cflags.append("-Werror")
if os.environ.get("BU_OSPROFILER_DEBUG") == "1":
    cflags += ["-O0", "-g"]
else:
    cflags += ["-O2"]
if os.environ.get("BU_OSPROFILER_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    # no freelists: reusing a freed block would hide a use after free from ASan
    cflags += san + ["-fno-sanitize-recover=undefined", "-DBU_NO_FREELIST"]
    ldflags += san

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "ext", "*.c")))

setup(
    ext_modules=[
        Extension(
            "bu_osprofiler._core",
            sources=sources,
            depends=sorted(glob.glob("ext/*.h")),
            include_dirs=["ext"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
)
