"""GGUF quantisation names, and llama.cpp's own quantiser for the k-quants.

f32 / f16 / bf16 / q8_0 are written directly by the `gguf` package (gguf_convert.py). Every other type goes through
`llama_model_quantize` from the libllama shared library that node-llama-cpp ships prebuilt (the same llama.cpp
build the export's check loads the GGUF with), called through ctypes in a child process so that a crash in native
code is an error message, not a dead export. Run alone:

    python -m expertkit.export.quantize LIB_DIR IN.gguf OUT.gguf q4_k_m
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

from expertkit.core.errors import ExpertkitError

# name -> llama_ftype (llama.h of the pinned llama.cpp); the first four are written by the gguf package
WRITTEN_BY_GGUF = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}
LLAMA_CPP_TYPES = {
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_s": 11,
    "q3_k_m": 12,
    "q3_k_l": 13,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
}
# llama.cpp types that need an importance matrix (llama-imatrix over calibration text): not offered
NEEDS_IMATRIX = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m",
                 "iq4_nl", "iq4_xs", "q2_k_s", "tq1_0", "tq2_0"}  # fmt: skip
QUANTIZATIONS = {**WRITTEN_BY_GGUF, **LLAMA_CPP_TYPES}


def parse_quantizations(text: str) -> list[str]:
    """'f16, Q4_K_M' -> ['f16', 'q4_k_m'], or an error listing the names llama.cpp knows."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"name at least one quantisation: {', '.join(QUANTIZATIONS)}")
    for name in names:
        if name in NEEDS_IMATRIX:
            raise ValueError(
                f"'{name}' needs an importance matrix (llama-imatrix on calibration text), which export does not "
                f"compute; without one: {', '.join(QUANTIZATIONS)}"
            )
        if name not in QUANTIZATIONS:
            import difflib

            close = difflib.get_close_matches(name, list(QUANTIZATIONS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown quantisation '{name}': {hint}llama.cpp's are {', '.join(QUANTIZATIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"'{text}' names a quantisation twice")
    return names


def quantize(lib_dir: Path, src: Path, dst: Path, name: str, timeout: float = 3600) -> None:
    """src (an f16 GGUF) -> dst in `name`, by llama.cpp's quantiser in a child process."""
    cmd = [sys.executable, "-m", "expertkit.export.quantize", str(lib_dir), str(src), str(dst), name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not dst.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ExpertkitError(
            f"llama.cpp's quantiser failed to write {name} (exit {proc.returncode}): {' | '.join(tail)[:600]}",
            hint="the f16 file converted fine: export_quantization=f16 (or q8_0) needs no quantiser",
        )


class QuantizeParams(ctypes.Structure):
    """llama_model_quantize_params: only the two leading fields are set here; the padding holds the rest, which
    llama_model_quantize_default_params fills in whatever this build's layout is (returned through memory)."""

    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int32), ("rest", ctypes.c_byte * 248)]


def quantize_in_process(lib_dir: Path, src: Path, dst: Path, name: str) -> int:
    for dep in ("libggml-base.so", "libggml.v0.4.0.so", "libggml.so"):  # libllama finds them by RUNPATH too
        if (lib_dir / dep).is_file():
            ctypes.CDLL(str(lib_dir / dep), mode=ctypes.RTLD_GLOBAL)
    lib_path = next(iter(sorted(lib_dir.glob("libllama*.so"))), None)
    if lib_path is None:
        print(f"no libllama*.so in {lib_dir}", file=sys.stderr)
        return 2
    lib = ctypes.CDLL(str(lib_path))
    lib.llama_backend_init()
    lib.llama_model_quantize_default_params.restype = QuantizeParams
    params = lib.llama_model_quantize_default_params()
    params.ftype = QUANTIZATIONS[name]
    params.nthread = 0  # all cores
    lib.llama_model_quantize.restype = ctypes.c_uint32
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    return int(lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)))


if __name__ == "__main__":
    sys.exit(quantize_in_process(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]))
