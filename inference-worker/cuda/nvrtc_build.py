"""Compiles the worker's CUDA kernels with NVRTC (from the pinned PyPI wheels, no nvcc, no GPU).

Used by `cargo xtask cuda-check` (registers/spills per kernel against budgets.toml) and by the
worker's build.rs under the `cuda` feature (cubins for sm_80/sm_90 and compute_80 PTX to embed).

    python nvrtc_build.py --arch sm_90 [--arch compute_80 ...] [--out DIR] [--opt=-maxrregcount=N] FILE.cu...

For each file and arch it writes DIR/<stem>.<arch>.cubin (real archs) or .ptx (virtual archs),
and prints NVRTC's log, which for real archs carries ptxas' `-v` report, between lines
`== <file> <arch>` and `== end`. Exit status 1 on any compile error.
"""

import argparse
import ctypes
import glob
import os
import sys


def load_nvrtc():
    import nvidia.cuda_nvrtc

    libdir = os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib")
    libs = sorted(glob.glob(os.path.join(libdir, "libnvrtc.so.*")))
    if not libs:
        sys.exit(f"nvrtc_build: no libnvrtc.so in {libdir}")
    return ctypes.CDLL(libs[0])


def runtime_include():
    import nvidia.cuda_runtime

    return os.path.join(list(nvidia.cuda_runtime.__path__)[0], "include")


def check(nvrtc, rc, what):
    if rc != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        sys.exit(f"nvrtc_build: {what}: {nvrtc.nvrtcGetErrorString(rc).decode()}")


def compile_one(nvrtc, path, arch, extra):
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    name = os.path.basename(path).encode()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, name, 0, None, None), "create")
    here = os.path.dirname(os.path.abspath(path))
    opts = [
        f"--gpu-architecture={arch}",
        "--std=c++17",
        # No contraction of a*b+c: kernels write every FMA as fmaf(), so the CPU twin
        # (compiled with -ffp-contract=off) rounds exactly as the GPU does.
        "--fmad=false",
        "--extra-device-vectorization",
        f"-I{here}",
        f"-I{runtime_include()}",
        "-DSY_CUDA",
    ]
    if not arch.startswith("compute_"):
        opts.append("--ptxas-options=-v")
    opts += extra
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    out = None
    if rc == 0:
        if arch.startswith("compute_"):
            nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "ptx")
            out = buf.raw[: size.value - 1]
        else:
            nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, buf), "cubin")
            out = buf.raw
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", action="append", required=True)
    ap.add_argument("--out")
    ap.add_argument("--opt", action="append", default=[])
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    nvrtc = load_nvrtc()
    failed = False
    for f in a.files:
        stem = os.path.splitext(os.path.basename(f))[0]
        for arch in a.arch:
            rc, log, out = compile_one(nvrtc, f, arch, a.opt)
            print(f"== {f} {arch}")
            print(log.rstrip())
            print("== end", flush=True)
            if rc != 0:
                failed = True
                continue
            if a.out:
                ext = "ptx" if arch.startswith("compute_") else "cubin"
                with open(os.path.join(a.out, f"{stem}.{arch}.{ext}"), "wb") as fh:
                    fh.write(out)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
