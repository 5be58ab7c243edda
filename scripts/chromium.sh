#!/usr/bin/env bash
# Chromium for the browser test of reports/index.html (tests/test_html_report.py): installs
# Debian's chromium with apt when it is missing and this is a root Debian shell; otherwise says
# how, and exits 0 (that test then skips and says why).
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
echo "chromium: installing Debian's chromium (the browser test of reports/index.html)"
rc=0
"$(dirname "$0")/apt_install.sh" chromium || rc=$?
if [ "$rc" -eq 3 ]; then
  echo "chromium: not installed: run 'apt-get install chromium' as root" >&2
  echo "  (tests/test_html_report.py's browser test skips without it)" >&2
  exit 0
fi
[ "$rc" -eq 0 ] || exit "$rc"
command -v chromium >/dev/null || { echo "chromium: the package installed, but no chromium on PATH" >&2; exit 1; }
