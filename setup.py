"""Build hook for the native core (csrc/).

Metadata lives in pyproject.toml. This file only adds the torch extension when csrc/ holds
sources: the CPU extension always, the CUDA one when CUDA is available or FGP_BUILD_CUDA=1
(FGP_BUILD_CUDA=0 turns it off, FGP_BUILD_NATIVE=0 skips native code entirely).

Builds with ninja (parallel; MAX_JOBS caps the jobs) where the ninja executable is on PATH, else
torch falls back to a serial build with a warning. CUDA targets: TORCH_CUDA_ARCH_LIST when set
(e.g. "9.0"), else the visible cards' own architectures, else (no GPU: the CI compile check)
"8.0;9.0", i.e. sm_80 and sm_90.
"""
import glob
import os

from setuptools import setup


def _native_extensions():
    if os.environ.get("FGP_BUILD_NATIVE", "1") == "0":
        return [], {}
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    if not cpu_sources:
        return [], {}
    from torch.utils import cpp_extension

    include = [os.path.abspath("csrc")]
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
    exts = [
        cpp_extension.CppExtension(
            "fgp_fast._C", cpu_sources, include_dirs=include,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
        )
    ]
    want_cuda = os.environ.get("FGP_BUILD_CUDA")
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if cuda_sources and (want_cuda == "1" or (want_cuda is None and cpp_extension.CUDA_HOME
                                                and _torch_has_cuda())):
        exts.append(
            cpp_extension.CUDAExtension(
                "fgp_fast._C_cuda", cuda_sources + sorted(glob.glob("csrc/cuda/*.cpp")),
                include_dirs=include,
                extra_compile_args={
                    "cxx": ["-O3", "-std=c++17", "-fno-math-errno", "-ffp-contract=off"],
                    # no -gencode here: torch derives it from TORCH_CUDA_ARCH_LIST (_cuda_arch_list)
                    "nvcc": ["-O3", "-std=c++17", "-lineinfo", "-fmad=false"],
                },
            )
        )
        os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_arch_list()
        print(f"fgp_fast: CUDA targets TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


def _cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set; else the visible GPUs' compute capabilities; else "8.0;9.0"."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    import torch

    if torch.version.cuda is not None and torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return "8.0;9.0"


def _torch_has_cuda():
    import torch

    return torch.version.cuda is not None


ext_modules, cmdclass = _native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
