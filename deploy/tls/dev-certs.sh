#!/bin/sh
# Makes a throwaway CA, a server certificate and a client certificate for trying TLS and mutual
# TLS locally (`docker compose --profile tls up`, README "TLS on the gRPC port"). Not for
# production: the CA's key sits beside the certificates, and the keys are readable by everyone
# so the container's non-root user (uid 10001) can read the bind-mounted files.
#
# Usage: deploy/tls/dev-certs.sh [DIR]   (default: the directory of this script)
# Running it again keeps the CA and issues new server and client certificates: a running
# vidgate picks them up within server.tls.reload_interval_ms (5 s), no restart. Delete ca.pem
# for a new CA too.
set -eu

dir=${1:-$(dirname "$0")}
days=30
cd "$dir"

[ -f ca.pem ] && [ -f ca.key ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=vidgate dev CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null

leaf() { # name, extendedKeyUsage, subjectAltName
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key.tmp" -out "$1.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
    "$2" "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.pem.tmp" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
  chmod 644 "$1.key.tmp"
  # Key first, then the certificate, each by rename: vidgate never reads half a file, and a
  # look between the two renames is retried rather than reported.
  mv "$1.key.tmp" "$1.key"
  mv "$1.pem.tmp" "$1.pem"
}

leaf server serverAuth "DNS:localhost,DNS:vidgate-tls,IP:127.0.0.1"
leaf client clientAuth "DNS:vidgate-client"
rm -f ca.srl
echo "wrote $(pwd)/ca.pem, server.pem/server.key, client.pem/client.key (valid $days days)"
