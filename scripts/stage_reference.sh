#!/usr/bin/env bash
# Stages the reference stack's Python code, from local clones of its public repositories, into a
# folder that scripts/reference_logits.py (and the peer benchmarks) put on the import path:
#   DEST/MambaInLlama/{util.py, mamba2/, mamba/}   from github.com/jxiw/MambaInLlama
#   DEST/mamba_ssm/{ops/triton, ops/selective_scan_interface.py, distributed, utils}
#   DEST/csrc/selective_scan/                       from github.com/state-spaces/mamba
# mamba_ssm's package __init__ files are written empty: the real ones import every module of the
# package (and its compiled extensions), where only the mixers' own imports are needed.
#
# Usage: scripts/stage_reference.sh MAMBAINLLAMA_CLONE MAMBA_CLONE [DEST]   (DEST: .peers)
# Never commit DEST: it is the reference's code, staged for a run.
set -euo pipefail
mil_repo=${1:?usage: stage_reference.sh MAMBAINLLAMA_CLONE MAMBA_CLONE [DEST]}
mamba_repo=${2:?usage: stage_reference.sh MAMBAINLLAMA_CLONE MAMBA_CLONE [DEST]}
dest=${3:-.peers}

# A clone with a work tree, or a bare one (git show reads either).
copy() {  # copy REPO PATH TARGET
  local repo=$1 path=$2 target=$3
  mkdir -p "$(dirname "$target")"
  if [[ -e $repo/$path ]]; then
    cp -r "$repo/$path" "$target"
  else
    git -C "$repo" show "HEAD:$path" > "$target" ||
      { echo "stage_reference.sh: $path is not in $repo" >&2; exit 2; }
  fi
}
copy_tree() {  # copy_tree REPO FOLDER TARGET: every file of a folder (work tree or HEAD)
  local repo=$1 folder=$2 target=$3 f
  if [[ -d $repo/$folder ]]; then
    mkdir -p "$target" && cp -r "$repo/$folder/." "$target/"
  else
    for f in $(git -C "$repo" ls-tree -r --name-only HEAD -- "$folder"); do copy "$repo" "$f" "$target/${f#"$folder"/}"; done
  fi
}

rm -rf "$dest/MambaInLlama" "$dest/mamba_ssm" "$dest/csrc/selective_scan"
copy "$mil_repo" util.py "$dest/MambaInLlama/util.py"
for variant in mamba2 mamba; do
  for f in hybrid_wrapper.py hybrid_model.py hybrid_mamba_layer.py hybrid_mamba_config.py; do
    copy "$mil_repo" "$variant/$f" "$dest/MambaInLlama/$variant/$f"
  done
done
copy_tree "$mamba_repo" mamba_ssm/ops/triton "$dest/mamba_ssm/ops/triton"
copy_tree "$mamba_repo" mamba_ssm/distributed "$dest/mamba_ssm/distributed"
copy_tree "$mamba_repo" mamba_ssm/utils "$dest/mamba_ssm/utils"
copy "$mamba_repo" mamba_ssm/ops/selective_scan_interface.py "$dest/mamba_ssm/ops/selective_scan_interface.py"
copy_tree "$mamba_repo" csrc/selective_scan "$dest/csrc/selective_scan"
for d in "$dest/mamba_ssm" "$dest/mamba_ssm/ops" "$dest/mamba_ssm/ops/triton" "$dest/mamba_ssm/distributed" \
         "$dest/mamba_ssm/utils"; do
  : > "$d/__init__.py"
done
printf 'MambaInLlama %s\nmamba %s\n' "$(git -C "$mil_repo" rev-parse HEAD)" "$(git -C "$mamba_repo" rev-parse HEAD)" \
  > "$dest/COMMITS"
echo "staged into $dest: $(tr '\n' ' ' < "$dest/COMMITS")"
