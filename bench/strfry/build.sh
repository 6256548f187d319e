#!/bin/bash
# Builds strfry (github.com/hoytech/strfry) for bench/relay's side-by-side runs.
#   bench/strfry/build.sh DIR        -> DIR/strfry (then STRFRY=DIR/strfry make bench-relay)
# Submodules are checked out at their pinned commits, or at their heads where a pin is gone from
# the upstream repository (golpe, rasgueadb and uWebSockets, in November 2026); the patch beside
# this script adds the four functions strfry wants from its uWebSockets fork. STRFRY_MIRROR=DIR
# takes each repository from DIR/<owner>+<name>/repo instead of GitHub. Needs root for apt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realspath() { mkdir -p "$1" && cd "$1" && pwd; }; realspath "${1:?usage: build.sh DIR}")
if [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git g++ make libssl-dev zlib1g-dev liblmdb-dev \
    libflatbuffers-dev flatbuffers-compiler libsecp256k1-dev libzstd-dev libyaml-perl libtemplate-perl \
    libregexp-grammars-perl >/dev/null
fi

# the clone URL of a GitHub URL (or of its mirror)
source_of() {
  local path=${1#https://github.com/}
  path=${path%.git}
  if [ -n "${STRFRY_MIRROR:-}" ]; then echo "$STRFRY_MIRROR/${path/\//+}/repo"; else echo "https://github.com/$path.git"; fi
}

# checks out every submodule of repository $1 at its pin (or head), recursively
submodules() {
  local repo=$1 key path name url pin
  [ -f "$repo/.gitmodules" ] || return 0
  git -C "$repo" config --file .gitmodules --get-regexp '\.path$' | while read -r key path; do
    name=${key#submodule.}
    name=${name%.path}
    url=$(git -C "$repo" config --file .gitmodules "submodule.$name.url")
    pin=$(git -C "$repo" ls-tree HEAD "$path" | awk '{print $3}')
    rm -rf "${repo:?}/$path"
    git clone -q "$(source_of "$url")" "$repo/$path"
    if git -C "$repo/$path" cat-file -e "$pin^{commit}" 2>/dev/null; then
      git -C "$repo/$path" checkout -q "$pin"
    else
      echo "build.sh: $path: pinned commit $pin is gone upstream; using its head" >&2
    fi
    submodules "$repo/$path"
  done
}

src=$out/src
rm -rf "$src"
git clone -q "$(source_of https://github.com/hoytech/strfry)" "$src"
submodules "$src"
git -C "$src/golpe/external/uWebSockets" apply "$here/uWebSockets.patch"
if [ -z "${STRFRY_NO_MAKE:-}" ]; then
  (cd "$src" && nice -n 19 make -j"$(nproc)" >/dev/null)
  cp "$src/strfry" "$out/strfry"
  echo "build.sh: $out/strfry"
fi
