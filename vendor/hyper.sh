#!/usr/bin/env bash
# The vendored hyper is the crates.io release plus vendor/hyper-<version>-idle-buffers.patch,
# nothing else (see vendor/README.md).
#
#   vendor/hyper.sh check              vendor/hyper is that release plus the patch, byte for byte
#   vendor/hyper.sh update VERSION SHA256
#                                      replace it with release VERSION (its .crate's sha256,
#                                      from the crates.io index) plus the patch, renamed for it
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# The release vendored now and its .crate's sha256 (the checksum crates.io publishes).
VERSION=1.12.0
SHA256=2c3e324da4c95177d6291d4c8730197c0d1822f8a9766814a4a44fa5ab797c9c

# Unpacks release $1 (sha256 $2) into $3/hyper-$1 and applies the patch file $4.
fetch_patched() {
    local version=$1 sha=$2 into=$3 patch_file=$4
    curl -fsSL --retry 3 "https://static.crates.io/crates/hyper/hyper-$version.crate" \
        -o "$into/hyper.crate"
    echo "$sha  $into/hyper.crate" | sha256sum --check --quiet
    tar -xzf "$into/hyper.crate" -C "$into"
    patch --quiet --directory "$into/hyper-$version" --strip 1 --forward <"$patch_file"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "${1:-}" in
check)
    fetch_patched "$VERSION" "$SHA256" "$tmp" "$here/hyper-$VERSION-idle-buffers.patch"
    if ! diff -r "$tmp/hyper-$VERSION" "$here/hyper" >"$tmp/diff"; then
        cat "$tmp/diff" >&2
        echo "vendor/hyper is not hyper $VERSION plus its patch (diff above)" >&2
        exit 1
    fi
    echo "vendor/hyper is hyper $VERSION plus vendor/hyper-$VERSION-idle-buffers.patch"
    ;;
update)
    new=${2:?"usage: vendor/hyper.sh update VERSION SHA256"}
    sha=${3:?"usage: vendor/hyper.sh update VERSION SHA256"}
    fetch_patched "$new" "$sha" "$tmp" "$here/hyper-$VERSION-idle-buffers.patch"
    rm -rf "$here/hyper"
    mv "$tmp/hyper-$new" "$here/hyper"
    if [ "$new" != "$VERSION" ]; then
        git -C "$here" mv "hyper-$VERSION-idle-buffers.patch" "hyper-$new-idle-buffers.patch"
        sed -i "s/^VERSION=.*/VERSION=$new/; s/^SHA256=.*/SHA256=$sha/" "$here/hyper.sh"
    fi
    echo "vendor/hyper is now hyper $new plus the patch; run cargo update -p hyper, then the tests"
    ;;
*)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
