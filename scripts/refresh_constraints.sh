#!/usr/bin/env bash
# Refresh constraints.txt to today's newest allowed releases:
#   1. a throw-away venv gets simple-rlhf[dev] with no constraints (torch stays 2.13.0, CPU build);
#   2. its versions are written to constraints.txt;
#   3. then, by hand, in the same commit: `bash scripts/test.sh` must pass, and the README's main
#      command (`.venv/bin/simple-rlhf train` on idle cores, after `rm -rf .venv && bash
#      scripts/setup.sh`) re-measures the README's table (and benchmarks/learning_tests.py the
#      learning tests' margins if a learning number moved).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
SIMPLE_RLHF_UNPINNED=1 SIMPLE_RLHF_VENV="$tmp/venv" bash scripts/setup.sh --dev
{
  echo "# Versions the test suite and the README's numbers were measured with (see README, 'Pinned versions')."
  echo "# Used by scripts/setup.sh as a pip constraints file; regenerate with scripts/refresh_constraints.sh."
  "$tmp/venv/bin/pip" freeze --exclude-editable --disable-pip-version-check \
    | grep -v -i '^simple-rlhf' | sed 's/+cpu$//'
} > constraints.txt
echo "constraints.txt rewritten ($(grep -vc '^#' constraints.txt) packages); now run scripts/test.sh and re-measure the README"
