#!/usr/bin/env bash
# Checks deploy/compose/docker-compose.yml, alone and with the secure overlay
# (secure/docker-compose.secure.yml), without starting anything and without the secrets: the
# installed Compose parses and merges them (`config -q`), and each file validates against the
# Compose Specification schema, which is what `docker compose` (v2) reads, when docker-compose
# 1.29 is the Compose installed here. make-secrets.sh is checked with shellcheck's cheaper
# cousin, `bash -n`.
set -euo pipefail
# shellcheck source=deploy/compose/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

compose config -q
echo "validate: docker-compose.yml parses with $COMPOSE"
CHORUS_SECURE=1 CHORUS_SECRETS_DIR=/nonexistent bash -c \
    'source deploy/compose/lib.sh && compose config -q'
echo "validate: docker-compose.yml + secure/docker-compose.secure.yml parse and merge with $COMPOSE"
bash -n deploy/compose/secure/make-secrets.sh
spec=$(/usr/bin/python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "config", "compose_spec.json"))' 2>/dev/null || true)
if [ -n "$spec" ] && [ -f "$spec" ] && [ -x deploy/.venv/bin/python ]; then
    deploy/.venv/bin/python - "$spec" deploy/compose/docker-compose.yml deploy/compose/secure/docker-compose.secure.yml <<'PY'
import json, sys
import jsonschema, yaml
schema = json.load(open(sys.argv[1]))
bad = 0
for path in sys.argv[2:]:
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(open(path))))
    for e in errors:
        print(f"validate: {path}: {'/'.join(map(str, e.path))}: {e.message}", file=sys.stderr)
    if errors:
        bad += 1
    else:
        print(f"validate: {path} conforms to the Compose Specification schema")
sys.exit(1 if bad else 0)
PY
fi
