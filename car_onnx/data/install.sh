#!/bin/sh
# car-onnx offline install kit, written by `car-onnx pack`. On the target machine, with no network:
#   sh install.sh [VENV_DIR]      VENV_DIR defaults to $XDG_DATA_HOME/car-onnx/venv (~/.local/share/car-onnx/venv)
# 1. checks the sha256 of every file of the kit and stops, naming each bad file, before anything is installed;
# 2. creates a virtual environment and installs car-onnx from wheels/ only (pip --no-index, pip's config ignored);
# 3. puts the first bundle at the default bundle location ($CAR_ONNX_BUNDLE if set) and runs `car-onnx info`.
# PYTHON names the interpreter to use (default python3); it must be the Python version the kit was packed for.
set -eu

KIT=$(cd "$(dirname "$0")" && pwd)
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
VENV=${1:-$DATA/car-onnx/venv}
PYTHON=${PYTHON:-python3}
REQUIREMENT='@REQUIREMENT@'
PYTHON_VERSION='@PYTHON_VERSION@'
BUNDLES='@BUNDLES@'

say() { echo "install.sh: $*" >&2; }
die() { say "$*"; exit 1; }

command -v sha256sum >/dev/null 2>&1 || die "sha256sum (GNU coreutils) not found; nothing was installed"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: set PYTHON to a Python $PYTHON_VERSION interpreter; nothing was installed"
have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$PYTHON_VERSION" ] || die "the kit holds wheels for Python $PYTHON_VERSION but $PYTHON is Python $have: set PYTHON to a Python $PYTHON_VERSION interpreter; nothing was installed"

# 1. Every file against its sha256 (the list of kit.json, written here by car-onnx pack).
bad=0
while read -r sum path; do
    if [ ! -f "$KIT/$path" ]; then
        say "$path: missing"; bad=1
    elif [ "$(sha256sum < "$KIT/$path" | cut -d' ' -f1)" != "$sum" ]; then
        say "$path: sha256 mismatch"; bad=1
    fi
done <<'SHA256'
@SHA256@
SHA256
[ "$bad" = 0 ] || die "the kit is damaged (files above): copy it again; nothing was installed"

# The first bundle goes to the default location, any other beside it under its own name.
dest_of() {
    if [ "$1" = "$FIRST" ]; then echo "${CAR_ONNX_BUNDLE:-$DATA/car-onnx/default}"; else echo "$DATA/car-onnx/$1"; fi
}
FIRST=${BUNDLES%% *}
for name in $BUNDLES; do
    dest=$(dest_of "$name")
    if [ -e "$dest" ] && [ "$(sha256sum 2>/dev/null < "$dest/manifest.json")" != "$(sha256sum < "$KIT/bundles/$name/manifest.json")" ]; then
        die "$dest already holds another bundle: move it away or set CAR_ONNX_BUNDLE to another directory; nothing was installed"
    fi
done

# 2. The virtual environment, from the kit's wheels only.
fresh=0
[ -e "$VENV" ] || fresh=1
"$PYTHON" -m venv "$VENV" || die "could not create a virtual environment at $VENV (Debian/Ubuntu: apt install python3-venv)"
if ! PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip --isolated install --quiet --disable-pip-version-check \
        --no-index --find-links "$KIT/wheels" "$REQUIREMENT"; then
    [ "$fresh" = 0 ] || rm -rf "$VENV"
    die "pip could not install $REQUIREMENT from $KIT/wheels (its message is above)"
fi

# 3. The bundles, then a smoke test.
for name in $BUNDLES; do
    dest=$(dest_of "$name")
    if [ ! -e "$dest" ]; then
        mkdir -p "$(dirname "$dest")"
        cp -R "$KIT/bundles/$name" "$dest.partial.$$"
        mv "$dest.partial.$$" "$dest"
    fi
done
"$VENV/bin/car-onnx" info

say "installed $REQUIREMENT into $VENV; run $VENV/bin/car-onnx (or put $VENV/bin on PATH)"
for name in $BUNDLES; do
    dest=$(dest_of "$name")
    if [ "$name" = "$FIRST" ] && [ -z "${CAR_ONNX_BUNDLE:-}" ]; then
        say "bundle '$name' at $dest, the default bundle location"
    else
        say "bundle '$name' at $dest: use it with --bundle $dest or CAR_ONNX_BUNDLE=$dest"
    fi
done
