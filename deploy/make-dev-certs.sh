#!/usr/bin/env bash
# Makes a development CA and one server certificate for the TLS overlay
# (docker-compose.tls.yml), valid for the compose service names and localhost.
# Not for production: use certificates from your own CA there.
set -euo pipefail
out="${1:-$(dirname "$0")/certs}"
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:3072 -sha256 -days 365 -nodes \
  -keyout ca.key -out ca.crt -subj "/CN=FedXAI development CA" 2>/dev/null
openssl req -newkey rsa:3072 -sha256 -nodes -keyout server.key -out server.csr \
  -subj "/CN=fedxai" 2>/dev/null
cat > server.ext <<'EXT'
subjectAltName = DNS:localhost, DNS:explainer, DNS:aggregator, IP:127.0.0.1
extendedKeyUsage = serverAuth
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -sha256 \
  -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
# DEVELOPMENT ONLY: the key is made readable by all, since the services (uid 10001)
# read it through a compose secret that keeps the file's mode. Keep ca.key out of
# any image or repository.
chmod 644 ca.crt server.crt server.key
chmod 600 ca.key
echo "development certificates in $out: ca.crt, server.crt, server.key"
