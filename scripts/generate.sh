#!/usr/bin/env bash
# Generate the typed client package into $1 from the OpenAPI document and generator-config.yml.
# The one recipe behind `make generate` and `make check-generated`, so they cannot disagree.
# Runs the generator and its ruff post hooks from the pinned venv only (constraints.txt).
# $2, optional: another document (tests/test_upgrade.py regenerates from modified copies).
set -euo pipefail
out=$1
spec=${2:-openapi/togai-ingestion.yaml}
bin=${VENV_BIN:?VENV_BIN must name the venv bin folder}
rm -rf "$out"   # --overwrite would keep stale files
PATH="$bin:$PATH" RUFF_NO_CACHE=true "$bin/openapi-python-client" generate \
  --path "$spec" --config generator-config.yml \
  --meta none --output-path "$out" --fail-on-warning >/dev/null
# --meta none leaves out the PEP 561 marker; the package is typed, so the recipe adds it.
printf '# Marker file for PEP 561\n' > "$out/py.typed"
# The generator ignores misspelled config keys: check what the config is meant to produce.
test -f "$out/client.py" && test -d "$out/models" && test -d "$out/api/event_ingestion"
if [ -e "$out/.ruff_cache" ]; then echo "generate.sh: .ruff_cache in the output" >&2; exit 1; fi
