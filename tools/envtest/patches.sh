# shellcheck shell=bash
# The project's patches to the Kubernetes sources (sourced by build.sh and ensure.sh). A patch
# named COMPONENT-WHAT.patch beside this file belongs to COMPONENT (kubelet, kube-proxy, ...); it
# is applied to the whole tree, and only COMPONENT is rebuilt when it changes.
PATCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The patch files of COMPONENT ("all": every patch), sorted, one per line.
patch_files() {
  local f
  for f in "$PATCH_DIR"/*.patch; do
    [ -e "$f" ] || continue
    case "$1" in
      all) echo "$f" ;;
      *) case "$(basename "$f")" in "$1"-*.patch) echo "$f" ;; esac ;;
    esac
  done | LC_ALL=C sort
}

# A short sha256 of COMPONENT's patches, empty when it has none.
patches_id() {
  local files
  files=$(patch_files "$1")
  [ -n "$files" ] || return 0
  # shellcheck disable=SC2086
  cat $files | sha256sum | cut -c1-16
}
