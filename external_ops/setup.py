"""Build the paddlemix fused ops as one Paddle extension module, ``paddlemix_ops``.

    cd external_ops && python setup.py install
    pip install --no-build-isolation ./external_ops      (needs the ``wheel`` package or setuptools >= 70.1)

C++ CPU kernels are always built (with OpenMP when the compiler supports it). The CUDA kernels are added when Paddle
is a CUDA build and ``nvcc`` is found where Paddle's own build looks for it (``find_nvcc``); they are compiled for the
local GPU's architecture, or for the list in ``PADDLEMIX_CUDA_ARCHS`` (default "80;90" when no GPU is visible), plus
PTX of the newest one so that newer GPUs can compile the kernels at load time. ``PADDLEMIX_OPS_NATIVE=0`` leaves out
``-march=native`` (for a build meant to run on another CPU).
"""

import os
import re
import shutil
import subprocess
import tempfile

import paddle
from paddle.utils.cpp_extension import CppExtension, CUDAExtension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# one translation unit that includes every csrc/*_op.h binding and registers the ops (paddle/extension.h is parsed once)
CPU_SOURCE = os.path.join("csrc", "paddlemix_ops.cc")
OPENMP_TEST = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def _compiles(flags, program="int main() { return 0; }\n"):
    """Whether the C++ compiler builds `program` with `flags`."""
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cc")
        with open(src, "w") as f:
            f.write(program)
        cmd = [cxx, src, "-o", os.path.join(tmp, "t"), *flags]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


# where paddle.utils.cpp_extension looks for CUDA after $CUDA_HOME, $CUDA_PATH and the nvcc on PATH
DEFAULT_CUDA_HOME = "/usr/local/cuda"


def find_nvcc():
    """The nvcc that Paddle's build will run for the .cu source, or None. Paddle compiles CUDA sources with
    ``<CUDA_HOME>/bin/nvcc``, where ``find_cuda_home`` (paddle/utils/cpp_extension/extension_utils.py) takes
    $CUDA_HOME or $CUDA_PATH, else the folder above the ``nvcc`` on PATH, else /usr/local/cuda: an nvcc that is
    only in /usr/local/cuda/bin (the usual CUDA install, not on PATH) still counts."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        on_path = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(on_path)) if on_path else DEFAULT_CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc")
    return nvcc if os.path.isfile(nvcc) and os.access(nvcc, os.X_OK) else None


def cuda_arch_flags(archs):
    """nvcc -gencode flags: machine code (SASS) for each architecture, and PTX of the newest one, which the driver
    compiles at load time on any newer GPU (without it, a card newer than every listed architecture finds no kernel
    image and every launch fails)."""
    archs = sorted(set(archs), key=lambda a: int(re.match(r"\d+", a).group()))
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags + ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def _cuda_archs():
    env = os.environ.get("PADDLEMIX_CUDA_ARCHS")
    if env:
        return [a.strip() for a in env.replace(",", ";").split(";") if a.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.split()
    except OSError:
        out = []
    archs = sorted({cap.replace(".", "") for cap in out if cap.replace(".", "").isdigit()})
    return archs or ["80", "90"]


def _openmp_link_flags():
    """Link the OpenMP runtime that Paddle itself loads (Intel's libiomp5, which also provides GCC's GOMP_* entry
    points) instead of GCC's libgomp: two OpenMP runtimes in one process spin against each other, which made small
    ops 100x slower (rms_norm on [1, 1, 512]: 3-15 ms instead of 0.04 ms). libgomp is the fallback when Paddle ships
    no libiomp5."""
    libs = os.path.join(os.path.dirname(paddle.__file__), "libs")
    if os.path.isfile(os.path.join(libs, "libiomp5.so")):
        return [f"-L{libs}", "-l:libiomp5.so", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


def _extension():
    # no FMA contraction (results as the fallback rounds them); -fno-trapping-math lets GCC vectorize the clamps and
    # selects of the exp loops (it changes no result, only floating-point exception flags)
    cxx_flags = ["-O3", "-g0", "-std=c++17", "-ffp-contract=off", "-fno-trapping-math"]
    link_flags = []
    if os.environ.get("PADDLEMIX_OPS_NATIVE", "1") != "0" and _compiles(["-march=native"]):
        cxx_flags.append("-march=native")
    if _compiles(["-fopenmp"], OPENMP_TEST):
        cxx_flags.append("-fopenmp")
        link_flags += _openmp_link_flags()
    else:
        cxx_flags.append("-fopenmp-simd")
    sources = [CPU_SOURCE]
    include_dirs = [os.path.join(HERE, "csrc")]
    nvcc = find_nvcc() if paddle.is_compiled_with_cuda() else None
    if paddle.is_compiled_with_cuda() and nvcc is None:
        print("paddlemix_ops: Paddle is a CUDA build but no nvcc was found ($CUDA_HOME/bin, $CUDA_PATH/bin, PATH, "
              f"{DEFAULT_CUDA_HOME}/bin): building the CPU kernels only")
    if nvcc is not None:
        nvcc_flags = ["-O3", "-std=c++17", "-DPADDLEMIX_WITH_CUDA"] + cuda_arch_flags(_cuda_archs())
        return CUDAExtension(
            sources=sources + [os.path.join("csrc", "kernels", "launch.cu")],
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags + ["-DPADDLEMIX_WITH_CUDA"], "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    return CppExtension(
        sources=sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
    )


if __name__ == "__main__":
    os.chdir(HERE)
    setup(name="paddlemix_ops", version="0.1.0", ext_modules=_extension())
