#!/usr/bin/env bash
# Real footage for bench/real_world.py, extracted from the openmpf/openmpf repository (its test
# samples: CC BY 2.0 clips and photos, NIST SD32 mugshots; attributions in the NOTICE files copied
# along) and checked against scripts/real_media.sha256. Nothing is committed to fgp_fast.
#
#   scripts/fetch_real_media.sh [DEST]          # DEST defaults to bench/real_media (git-ignored)
#
# Source, first found: $OPENMPF_GIT (a git directory of openmpf/openmpf, e.g. a fetched mirror),
# /work/.mirror/openmpf+openmpf/repo, or a shallow sparse clone of https://github.com/openmpf/openmpf.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-bench/real_media}
COMMIT=1f9b0dde560a6b284fb71e7cfb441b355ca9e404
PREFIX=trunk/mpf-system-tests/src/test/resources/samples
LIST=scripts/real_media.sha256
mkdir -p "$DEST"

GIT=${OPENMPF_GIT:-/work/.mirror/openmpf+openmpf/repo}
tmp=""
if ! git -C "$GIT" cat-file -e "$COMMIT^{commit}" 2>/dev/null && ! git -C "$GIT" cat-file -e HEAD 2>/dev/null; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "cloning openmpf/openmpf (sparse, the samples only) ..." >&2
    git clone -q --depth 1 --filter=blob:none --sparse https://github.com/openmpf/openmpf "$tmp/openmpf"
    git -C "$tmp/openmpf" sparse-checkout set "$PREFIX/face" "$PREFIX/person"
    GIT="$tmp/openmpf/.git"
fi
REV=$COMMIT
git -C "$GIT" cat-file -e "$REV^{commit}" 2>/dev/null || REV=HEAD

failed=0
while read -r sum path _; do
    [[ -z "$sum" || "$sum" == \#* ]] && continue
    name=$(basename "$path")
    [[ "$name" == NOTICE ]] && name="NOTICE_$(dirname "$path")"
    out="$DEST/$name"
    if [[ ! -f "$out" ]] || ! echo "$sum  $out" | sha256sum -c --quiet - 2>/dev/null; then
        git -C "$GIT" show "$REV:$PREFIX/$path" > "$out.part"
        mv "$out.part" "$out"
    fi
    if echo "$sum  $out" | sha256sum -c --quiet - 2>/dev/null; then
        echo "ok  $out"
    else
        echo "CHECKSUM MISMATCH  $out (expected $sum)" >&2
        rm -f "$out"
        failed=1
    fi
done < "$LIST"
exit $failed
