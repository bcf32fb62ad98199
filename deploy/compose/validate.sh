#!/usr/bin/env bash
# Checks deploy/compose/docker-compose.yml without starting anything: the installed Compose
# parses it (`config -q`), and it validates against the Compose Specification schema, which is
# what `docker compose` (v2) reads, when docker-compose 1.29 is the Compose installed here.
set -euo pipefail
# shellcheck source=deploy/compose/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

compose config -q
echo "validate: docker-compose.yml parses with $COMPOSE"
spec=$(/usr/bin/python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "config", "compose_spec.json"))' 2>/dev/null || true)
if [ -n "$spec" ] && [ -f "$spec" ] && [ -x deploy/.venv/bin/python ]; then
    deploy/.venv/bin/python - "$spec" deploy/compose/docker-compose.yml <<'PY'
import json, sys
import jsonschema, yaml
schema = json.load(open(sys.argv[1]))
errors = list(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(open(sys.argv[2]))))
for e in errors:
    print(f"validate: {'/'.join(map(str, e.path))}: {e.message}", file=sys.stderr)
sys.exit(1 if errors else print("validate: docker-compose.yml conforms to the Compose Specification schema"))
PY
fi
