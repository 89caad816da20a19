#!/usr/bin/env bash
# The GPU check: build fastload for this machine's GPU, run every CUDA test and the GPU
# benchmark, and leave logs and a JSON of the results in OUTDIR. One command, no network, at
# most 8 minutes with the build (every step is time-limited within that budget).
#
#   benchmarks/gpu_check.sh OUTDIR [--wheels DIR] [--dry-run]
#   benchmarks/gpu_check.sh --download-wheels DIR [--with-dali]     (where there is a network)
#
# It needs: an NVIDIA GPU and its driver (nvidia-smi), Python >= 3.9 with torch (CUDA),
# numpy, pillow, pyarrow, fsspec, xxhash, psutil, tqdm, pytest (+ pytest-timeout), hypothesis,
# and to build: nvcc, cmake >= 3.18, ninja, nanobind. Anything else comes from --wheels DIR,
# installed with `pip install --no-index --no-deps --target OUTDIR/deps` and put on PYTHONPATH
# (nothing is installed into the machine's Python). Wheels for CPython 3.12, manylinux x86_64:
#
#   required  zstandard-*-cp312-cp312-manylinux*_x86_64.whl         (~5.5 MB; fastload reads
#                                                                     zstd blocks with it)
#   optional  simplejpeg-*-cp312-cp312-manylinux*_x86_64.whl        (~0.4 MB; faster CPU JPEG
#                                                                     decode, else Pillow's)
#             nvidia_nvimgcodec_cu13-*-py3-none-manylinux_2_28_x86_64.whl   (~25 MB) and
#             nvidia_nvjpeg-13.*-py3-none-manylinux*_x86_64.whl     (~4 MB): the nvImageCodec
#                                                                     backend's tests and rows
#             nvidia_dali_cuda130-*-py3-none-manylinux_2_28_x86_64.whl (~200 MB) with
#             nvidia_libnvcomp_cu13, astunparse, gast, optree and six wheels: DALI's tests
#             and rows. A file over the 64 MiB a transfer can carry goes in pieces made with
#             `split -b 60M X.whl X.whl.part-`; the pieces (X.whl.part-aa, -ab, ...) are
#             joined here.
#
# Fetch them on a machine with a network (this runs the pip download below and splits DALI):
#   benchmarks/gpu_check.sh --download-wheels wheels/ [--with-dali]
# which is
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d wheels/ \
#     zstandard simplejpeg nvidia-nvimgcodec-cu13 nvidia-nvjpeg \
#     [nvidia-dali-cuda130 nvidia-libnvcomp-cu13 astunparse gast optree six]
#
# What it does, each step logged to OUTDIR/<step>.log:
#   1. wheels   joins split wheels, installs DIR/*.whl into OUTDIR/deps, says which optional
#               libraries are missing and what is skipped for it
#   2. build    CMake + Ninja, in OUTDIR/build: fastload._core with its CUDA part
#               (FASTLOAD_CUDA=ON) for this GPU's architecture (nvidia-smi's compute_cap,
#               e.g. 90 for H100/H200), and the C++ unit tests; the module is copied into
#               fastload/ of this checkout, as benchmarks and tests import it from there
#   3. ctest    the C++ unit tests of csrc/core
#   4. pytest   every test marked cuda (pytest -m cuda tests); JUnit XML in OUTDIR
#   5. bench    benchmarks/gpu.py, its JSON in OUTDIR/gpu.json
# then OUTDIR/gpu_check.json sums it up (the card, each step's status and time, test counts,
# what was skipped, the benchmark's rows). Exit status 0 only if every step passed.
#
# --dry-run: everything that needs no GPU, to check this script where there is none (CI runs
# it): arguments, wheels, the build (CUDA compiled if nvcc is here, for sm_90 unless
# FASTLOAD_CUDA_ARCH says otherwise), the C++ tests, the CPU tests of the finishing ops, of the
# loader's finishing and of the nvImageCodec backend, the collection of every CUDA test, and
# gpu.py --dry-run (its loader rows included, on the CPU).
#
# Environment: PYTHON (default python3), FASTLOAD_CUDA_ARCH (overrides the detected arch),
# FASTLOAD_CHECK_BUDGET (seconds for the whole check, default 470; steps past it are not run).
set -uo pipefail

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUTDIR="" WHEELS="" DRY=0 DOWNLOAD="" WITH_DALI=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --download-wheels) DOWNLOAD=${2:?--download-wheels needs a folder}; shift 2 ;;
    --with-dali) WITH_DALI=1; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) [ -z "$OUTDIR" ] || { echo "one OUTDIR only, got '$OUTDIR' and '$1'" >&2; usage; }
       OUTDIR=$1; shift ;;
  esac
done

# ---------------------------------------------------------------- --download-wheels DIR
if [ -n "$DOWNLOAD" ]; then
  pkgs=(zstandard simplejpeg nvidia-nvimgcodec-cu13 nvidia-nvjpeg)
  [ "$WITH_DALI" = 1 ] && pkgs+=(nvidia-dali-cuda130 nvidia-libnvcomp-cu13 astunparse gast optree six)
  mkdir -p "$DOWNLOAD"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DOWNLOAD" "${pkgs[@]}" || exit 1
  for whl in "$DOWNLOAD"/*.whl; do  # anything over 60 MB goes in pieces
    if [ "$(stat -c %s "$whl")" -gt $((60 * 1024 * 1024)) ]; then
      split -b 60M "$whl" "$whl.part-" && rm "$whl" && echo "split $(basename "$whl") into pieces"
    fi
  done
  ls -l "$DOWNLOAD"
  exit 0
fi

[ -n "$OUTDIR" ] || usage
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || { echo "--wheels: no folder $WHEELS" >&2; exit 2; }
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
[ -z "$WHEELS" ] || WHEELS=$(cd "$WHEELS" && pwd)
START=$SECONDS
BUDGET=${FASTLOAD_CHECK_BUDGET:-470}
STEPS="$OUTDIR/steps.tsv"  # step, status, seconds, note
: > "$STEPS"
SKIPPED="$OUTDIR/skipped.txt"
: > "$SKIPPED"
exec > >(tee "$OUTDIR/gpu_check.log") 2>&1

say() { echo "== $*"; }
skip() { echo "$*" >> "$SKIPPED"; echo "   skipped: $*"; }
# run_step NAME TIMEOUT COMMAND...: runs the command with its output in OUTDIR/NAME.log
# (and on the console), records status and time. No step runs past the whole check's budget
# (BUDGET seconds from the start, 470 by default: the check must fit in 8 minutes).
run_step() {
  local name=$1 limit=$2 t0=$SECONDS rc left
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    printf '%s\t%s\t0\n' "$name" "not run: out of time" >> "$STEPS"
    skip "$name: out of time (the check's budget is ${BUDGET}s)"
    return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  say "$name: $*"
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUTDIR/$name.log") 2>&1
  rc=$?
  local status=passed
  [ $rc = 0 ] || status="failed (exit $rc$([ $rc = 124 ] && echo ", over ${limit}s"))"
  printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - t0)) >> "$STEPS"
  say "$name: $status in $((SECONDS - t0)) s"
  return $rc
}

# ---------------------------------------------------------------- the machine
say "fastload GPU check$([ $DRY = 1 ] && echo ' (dry run)') -> $OUTDIR"
"$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' || {
  echo "no working $PYTHON with torch" >&2; exit 2; }
ARCH=${FASTLOAD_CUDA_ARCH:-}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv \
    | tee "$OUTDIR/gpu.csv"
  [ -n "$ARCH" ] || ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader \
    | tr -d ' .' | sort -u | paste -sd ';')
elif [ $DRY = 0 ]; then
  echo "no NVIDIA GPU here (nvidia-smi fails): run with --dry-run to check the script" >&2
  exit 2
else
  echo "no GPU (dry run)"
fi
[ -n "$ARCH" ] || ARCH=90
if command -v nvcc >/dev/null 2>&1; then
  CUDA_MODE=ON
  nvcc --version | tail -1
elif [ $DRY = 0 ]; then
  echo "nvcc not found: the CUDA part cannot be built" >&2
  exit 2
else
  CUDA_MODE=OFF
  skip "the CUDA part of the build: no nvcc here"
fi

# ---------------------------------------------------------------- 1. wheels
FAILED=0
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  mkdir -p "$OUTDIR/wheels"
  for first in "$WHEELS"/*.whl.part-aa; do  # join wheels that came in pieces
    [ -e "$first" ] || continue
    whl=$(basename "${first%.part-aa}")
    cat "${first%aa}"* > "$OUTDIR/wheels/$whl" && echo "joined $whl"
  done
  cp "$WHEELS"/*.whl "$OUTDIR/wheels/" 2>/dev/null
  if ls "$OUTDIR"/wheels/*.whl >/dev/null 2>&1; then
    rm -rf "$OUTDIR/deps"
    run_step wheels 120 "$PYTHON" -m pip install --no-index --no-deps --no-compile \
      --target "$OUTDIR/deps" "$OUTDIR"/wheels/*.whl || FAILED=1
    export PYTHONPATH="$OUTDIR/deps:$PYTHONPATH"
  else
    skip "installing wheels: no .whl in $WHEELS"
  fi
fi
"$PYTHON" - "$OUTDIR/libraries.json" <<'EOF'
import importlib, json, sys
found = {}
for name in ("zstandard", "simplejpeg", "nvidia.nvimgcodec", "nvidia.dali"):
    try:
        importlib.import_module(name)
        found[name] = True
    except Exception as e:  # a broken install is as missing as an absent one
        found[name] = f"{type(e).__name__}: {e}"
json.dump(found, open(sys.argv[1], "w"), indent=1)
for name, ok in found.items():
    print(f"   {name:20} {'ok' if ok is True else 'missing (' + ok + ')'}")
EOF
has() { "$PYTHON" -c "import json, sys; sys.exit(json.load(open('$OUTDIR/libraries.json'))['$1'] is not True)"; }
if ! has zstandard; then
  echo "zstandard is missing and fastload cannot import without it: put its cp312 wheel in" \
    "the --wheels folder (see the top of this script)" >&2
  exit 2
fi
has simplejpeg || skip "simplejpeg: the CPU decoder uses Pillow's JPEG decoder"
has nvidia.nvimgcodec || skip "nvImageCodec tests and benchmark rows: no nvidia-nvimgcodec wheel"
has nvidia.dali || skip "DALI tests and benchmark rows: no nvidia-dali wheel"

# ---------------------------------------------------------------- 2. build, 3. ctest
NANOBIND=$("$PYTHON" -m nanobind --cmake_dir 2>/dev/null) || {
  echo "nanobind is missing: it is needed to build fastload._core" >&2; exit 2; }
BUILD=(cmake -S "$REPO" -B "$OUTDIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  -Dnanobind_DIR="$NANOBIND" -DPython_EXECUTABLE="$(command -v "$PYTHON")"
  -DFASTLOAD_CUDA="$CUDA_MODE" -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DFASTLOAD_BUILD_TESTS=ON)
BUILT=0
if run_step configure 120 "${BUILD[@]}" && run_step build 300 cmake --build "$OUTDIR/build" &&
  cp "$OUTDIR"/build/_core*.so "$REPO/fastload/"; then
  BUILT=1
  "$PYTHON" -c 'import fastload._core as c; print("fastload._core:", c.__file__, "CUDA part:", c.core_has_cuda)'
  run_step ctest 60 ctest --test-dir "$OUTDIR/build" --output-on-failure || FAILED=1
else
  echo "the build failed: see $OUTDIR/build.log" >&2
  FAILED=1
fi

# ---------------------------------------------------------------- 4. pytest
cd "$REPO" || exit 2
PYTEST=("$PYTHON" -m pytest -p no:cacheprovider -q -rs)
if ! has nvidia.dali; then  # test modules that require DALI would fail to import
  while read -r f; do
    PYTEST+=(--ignore="$f")
    skip "the tests of $f: they need nvidia-dali"
  done < <(grep -rlE '^(import|from) nvidia\.dali' tests)
fi
if [ $BUILT = 1 ] && [ $DRY = 0 ]; then
  run_step pytest-cuda 300 "${PYTEST[@]}" -m cuda --junitxml="$OUTDIR/pytest-cuda.xml" tests \
    || FAILED=1
elif [ $BUILT = 1 ]; then
  run_step pytest-cpu 240 "${PYTEST[@]}" --junitxml="$OUTDIR/pytest-cpu.xml" \
    tests/decode/test_finish.py tests/decode/test_nvimgcodec.py tests/decode/test_params.py \
    tests/loader/test_loader_finish.py tests/loader/test_loader_nvimgcodec.py \
    || FAILED=1
  # Every CUDA test collects (imports) and skips cleanly without a GPU.
  run_step pytest-cuda 240 "${PYTEST[@]}" -m cuda --junitxml="$OUTDIR/pytest-cuda.xml" tests \
    || FAILED=1
fi

# ---------------------------------------------------------------- 5. bench
BENCH=("$PYTHON" benchmarks/gpu.py --out "$OUTDIR/gpu.json")
[ $DRY = 1 ] && BENCH+=(--dry-run)
if [ $BUILT = 1 ]; then
  run_step bench 200 "${BENCH[@]}" || FAILED=1
fi

# ---------------------------------------------------------------- summary
"$PYTHON" - "$OUTDIR" "$DRY" "$ARCH" "$((SECONDS - START))" <<'EOF'
import glob, json, os, sys
import xml.etree.ElementTree as ET

out, dry, arch, seconds = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
def read(name, default=None):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f) if name.endswith(".json") else f.read()
    except OSError:
        return default
steps = []
for line in (read("steps.tsv") or "").splitlines():
    name, status, secs = line.split("\t")
    steps.append({"step": name, "status": status, "seconds": int(secs)})
tests = {}
for path in sorted(glob.glob(os.path.join(out, "pytest-*.xml"))):
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    a = suite.attrib
    tests[os.path.basename(path)[:-4]] = {
        k: int(a.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
    }
summary = {
    "dry_run": dry,
    "gpu": (read("gpu.csv") or "none").strip().splitlines()[1:] or "none",
    "cuda_arch": arch,
    "seconds": seconds,
    "steps": steps,
    "tests": tests,
    "libraries": read("libraries.json", {}),
    "skipped": [s for s in (read("skipped.txt") or "").splitlines() if s],
    "benchmark": read("gpu.json"),
}
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"== summary ({seconds} s): {os.path.join(out, 'gpu_check.json')}")
for s in steps:
    print(f"   {s['step']:18} {s['status']} ({s['seconds']} s)")
for name, t in tests.items():
    print(f"   {name:18} {t}")
for s in summary["skipped"]:
    print(f"   skipped: {s}")
EOF
exit $FAILED
