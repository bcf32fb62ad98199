#!/usr/bin/env bash
# Makes the throwaway secrets of the secure compose variant (and of the secure Kubernetes
# overlay) with openssl, at run time; nothing here is ever committed (.gitignore lists both
# default folders):
#   ca.crt ca.key                 one CA for everything (ca.key: mode 600, never mounted)
#   worker-N.crt worker-N.key     N = 1..4, SAN DNS:worker-N.data (what coordinators dial in
#                                 compose) and DNS:worker-N; serverAuth + clientAuth
#   worker.crt worker.key         for Kubernetes: SAN DNS:*.chorus-worker.NS.svc(.cluster.local),
#                                 the names the secure overlay's workers advertise
#   coordinator.crt .key          the gateway's certificate (REST and gRPC) and the coordinators'
#                                 RPC client certificate: SAN coordinator-1, coordinator-2,
#                                 localhost, 127.0.0.1 and the `chorus` Service's names in NS;
#                                 serverAuth + clientAuth
#   api-key.secret                a generated API key (mode 600): what clients send as
#                                 `Authorization: Bearer <secret>`
#   api-keys.toml                 the coordinators' key file: its id and sha256, never the secret
#
# Usage: deploy/compose/secure/make-secrets.sh [DIR] [--force]
#   DIR      where to write (default deploy/compose/secure/secrets; the Kubernetes overlay reads
#            deploy/k8s/overlays/secure/secrets)
#   --force  replace what DIR holds; without it an existing, complete DIR is kept as it is
# Env: CHORUS_K8S_NAMESPACE (default chorus), CERT_DAYS (default 90).
#
# The containers run as uid 65532 and must read their key files: as root the script hands the
# files that get mounted to 65532 (mode 400 keys, 444 certificates); otherwise they are made
# world-readable (mode 644), which is fine for a throwaway cluster on one's own machine only.
set -euo pipefail

dir="" force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        -*) echo "make-secrets: unknown option $arg" >&2; exit 2 ;;
        *) dir=$arg ;;
    esac
done
dir=${dir:-$(cd "$(dirname "$0")" && pwd)/secrets}
ns=${CHORUS_K8S_NAMESPACE:-chorus}
days=${CERT_DAYS:-90}
command -v openssl >/dev/null || { echo "make-secrets: openssl is missing" >&2; exit 1; }

if [ "$force" = 0 ] && [ -f "$dir/api-keys.toml" ] && [ -f "$dir/worker.crt" ]; then
    echo "make-secrets: $dir already holds secrets (--force replaces them)"
    exit 0
fi
mkdir -p "$dir"
chmod 755 "$dir"  # the containers' user must be able to traverse it to the mounted files
cd "$dir"
rm -f ./*.crt ./*.key ./*.csr ./*.srl api-key.secret api-keys.toml
umask 077

# leaf NAME SAN EKU: a P-256 key and a certificate signed by the CA.
leaf() {
    local name=$1 san=$2 eku=$3
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" \
        -subj "/CN=$name" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
        -out "$name.crt" 2>/dev/null \
        -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "$san" "$eku")
    rm -f "$name.csr"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -keyout ca.key -out ca.crt -subj "/CN=chorus throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for n in 1 2 3 4; do
    leaf "worker-$n" "DNS:worker-$n.data,DNS:worker-$n" "serverAuth,clientAuth"
done
leaf worker "DNS:*.chorus-worker.$ns.svc,DNS:*.chorus-worker.$ns.svc.cluster.local" "serverAuth,clientAuth"
leaf coordinator "DNS:coordinator-1,DNS:coordinator-2,DNS:localhost,IP:127.0.0.1,DNS:chorus,DNS:chorus.$ns,DNS:chorus.$ns.svc,DNS:chorus.$ns.svc.cluster.local" \
    "serverAuth,clientAuth"
rm -f ca.srl

# 32 random bytes as URL-safe base64: a header value with no padding or '/' to quote.
secret=$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')
printf '%s' "$secret" >api-key.secret
digest=$(printf '%s' "$secret" | openssl dgst -sha256 -r | cut -d' ' -f1)
cat >api-keys.toml <<EOF
# Made by deploy/compose/secure/make-secrets.sh; the secret is in api-key.secret beside it.
[[key]]
id = "chorus-client"
sha256 = "$digest"
EOF

# ca.key and api-key.secret stay private to whoever ran this; the rest is what gets mounted.
chmod 600 ca.key api-key.secret
mounted_keys=(worker-1.key worker-2.key worker-3.key worker-4.key worker.key coordinator.key)
if [ "$(id -u)" -eq 0 ]; then
    chown 65532:65532 ./*.crt "${mounted_keys[@]}" api-keys.toml
    chmod 444 ./*.crt api-keys.toml
    chmod 400 "${mounted_keys[@]}"
else
    chmod 644 ./*.crt api-keys.toml "${mounted_keys[@]}"
fi
openssl verify -CAfile ca.crt worker-1.crt worker.crt coordinator.crt >/dev/null
echo "make-secrets: CA, 4+1 worker certificates, coordinator certificate and an API key in $dir"
echo "  the key: Authorization: Bearer \$(cat $dir/api-key.secret)"
