#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests: renders each overlay with `kubectl kustomize`
# and validates every object against the Kubernetes OpenAPI schemas in strict mode (unknown
# fields are errors) with kubernetes-validate, for the oldest and newest versions we support.
# The schemas ship inside the kubernetes-validate package; as root the validator runs in a
# network namespace with no interfaces, which proves that it needs no network.
#
# overlays/secure needs its secrets/ (git-ignored): it is rendered from a copy of deploy/k8s
# with throwaway secrets made by deploy/compose/secure/make-secrets.sh, never from your own
# files, and the copy is removed afterwards. Its pods are also checked for
# automountServiceAccountToken: false. deploy/monitoring (Prometheus Operator objects and the
# Grafana dashboard) is rendered and its rules checked; see the end of this script.
#
# Usage: deploy/k8s/validate.sh [--sync]
#   --sync   copy config/ensembles.toml to deploy/k8s/base/ensembles.toml first
# Env: K8S_VERSIONS (default "1.29.0 1.37.0"), KUBERNETES_VALIDATE (a kubernetes-validate to use;
#      default: deploy/.venv, made on first use with kubernetes-validate from PyPI).
set -euo pipefail
cd "$(dirname "$0")/../.."

versions=${K8S_VERSIONS:-1.29.0 1.37.0}
if [ "${1:-}" = "--sync" ]; then
    cp config/ensembles.toml deploy/k8s/base/ensembles.toml
fi
# The ConfigMap is generated from a copy (kustomize reads no file outside its folder).
if ! cmp -s config/ensembles.toml deploy/k8s/base/ensembles.toml; then
    echo "validate: deploy/k8s/base/ensembles.toml differs from config/ensembles.toml; run deploy/k8s/validate.sh --sync" >&2
    exit 1
fi

command -v kubectl >/dev/null || { echo "validate: kubectl is missing (apt-get install kubectl)" >&2; exit 1; }
validator=${KUBERNETES_VALIDATE:-deploy/.venv/bin/kubernetes-validate}
if [ ! -x "$validator" ]; then
    echo "validate: installing kubernetes-validate into deploy/.venv"
    python3 -m venv deploy/.venv
    deploy/.venv/bin/pip install -q --disable-pip-version-check -r deploy/requirements.txt
fi
offline=()
if [ "$(id -u)" -eq 0 ] && unshare --net true 2>/dev/null; then
    offline=(unshare --net)
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cp -r deploy/k8s "$out/k8s"
rm -rf "$out/k8s/overlays/secure/secrets"
deploy/compose/secure/make-secrets.sh "$out/k8s/overlays/secure/secrets" >/dev/null
status=0
for overlay in "$out"/k8s/overlays/*/; do
    name=$(basename "$overlay")
    kubectl kustomize "$overlay" >"$out/$name.yaml"
    kinds=$(grep -c '^kind:' "$out/$name.yaml")
    if [ "$name" = secure ] && ! "$(dirname "$validator")/python" - "$out/$name.yaml" <<'PY'
import sys, yaml
bad = [f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(open(sys.argv[1]))
       if d and "template" in d.get("spec", {})
       and d["spec"]["template"]["spec"].get("automountServiceAccountToken") is not False]
if bad:
    sys.exit(f"validate: overlays/secure: automountServiceAccountToken is not false in {', '.join(bad)}")
PY
    then
        status=1
    fi
    for version in $versions; do
        if "${offline[@]}" "$validator" --strict --quiet -k "$version" "$out/$name.yaml" >"$out/$name-$version.log" 2>&1; then
            echo "validate: overlays/$name: $kinds objects valid against Kubernetes $version (strict${offline:+, offline})"
        else
            echo "validate: overlays/$name: INVALID against Kubernetes $version:" >&2
            cat "$out/$name-$version.log" >&2
            status=1
        fi
    done
done

# deploy/monitoring: PodMonitors and a PrometheusRule are Prometheus Operator CRDs, which the
# Kubernetes schemas do not cover; check that the kustomization renders, that the PrometheusRule
# matches the plain rules file, and (with promtool) that the rules are valid. tests/monitoring.rs
# checks their metric names against a real cluster.
if kubectl kustomize deploy/monitoring >"$out/monitoring.yaml"; then
    kinds=$(grep '^kind:' "$out/monitoring.yaml" | sort | uniq -c | tr -s ' ' | paste -sd, -)
    echo "validate: deploy/monitoring renders:$kinds"
else
    status=1
fi
deploy/monitoring/sync.sh --check || status=1
if command -v promtool >/dev/null; then
    promtool check rules deploy/monitoring/prometheus/chorus-rules.yml >/dev/null || status=1
fi
exit $status
