#!/usr/bin/env bash
# A corpus for `plumb ppl` and `plumb kld`, from two Debian documentation
# packages fetched with apt-get (nothing is committed): the GNU Coding
# Standards and the GNU maintainers' information (package gnu-standards, GNU
# Free Documentation License 1.3), and the Debian Policy Manual (package
# debian-policy, GPL 2 or later), as plain text, about 220k tokens for Gemma
# 3. Writes corpus/gnu-debian.txt (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=corpus/gnu-debian.txt
if [[ -s "$OUT" ]]; then
    echo "$OUT is there"
    exit 0
fi
WORK=.cache/corpus
rm -rf "$WORK"
mkdir -p "$WORK/x" corpus
if ! (cd "$WORK" && apt-get download gnu-standards debian-policy >apt.log 2>&1); then
    cat "$WORK/apt.log" >&2
    echo "fetch-corpus: apt-get download failed" >&2
    exit 2
fi
for deb in "$WORK"/*.deb; do
    dpkg-deb -x "$deb" "$WORK/x"
done
DOC="$WORK/x/usr/share/doc"
for f in gnu-standards/standards.text.gz gnu-standards/maintain.text.gz debian-policy/policy.txt.gz; do
    [[ -f "$DOC/$f" ]] || { echo "fetch-corpus: $f is missing from the packages" >&2; exit 2; }
done
zcat "$DOC/gnu-standards/standards.text.gz" "$DOC/gnu-standards/maintain.text.gz" "$DOC/debian-policy/policy.txt.gz" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT ($(wc -c < "$OUT") bytes)"
