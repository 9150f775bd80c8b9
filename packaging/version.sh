#!/bin/sh
# Print adit's version from its one source, runtime/adit/version.py (no import needed).
here="$(cd "$(dirname "$0")" && pwd)"
sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$here/../runtime/adit/version.py"
