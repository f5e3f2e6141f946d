#!/usr/bin/env bash
# Makes a CA and a certificate for each member of docker/compose.yaml (primary, replica-1,
# replica-2: their service names, localhost and 127.0.0.1), for docker/compose.tls.yaml.
# Usage: docker/tls-certs.sh DIR (default docker/tls). Existing files are kept. Needs openssl.
# Keys are 0640 (group 999); the CA's key is kept beside DIR (DIR-ca/), not in it, so it is not mounted into
# the containers. The entrypoint reads the mounted files as root at start and gives postgres
# private copies.
set -euo pipefail
dir="${1:-$(dirname "$0")/tls}"
mkdir -p "$dir" "$dir-ca"
chmod 0755 "$dir"
chmod 0700 "$dir-ca"
cd "$dir"
ca_key="$dir-ca/ca.key"
umask 077
if [ ! -s ca.crt ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=pg-entrypoint compose CA" -keyout "$ca_key" -out ca.crt 2>/dev/null
fi
for member in primary replica-1 replica-2; do
    [ -s "$member.crt" ] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$member" \
        -keyout "$member.key" -out "$member.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\n' "$member" > "$member.ext"
    openssl x509 -req -in "$member.csr" -CA ca.crt -CAkey "$ca_key" -CAserial "$dir-ca/ca.srl" -CAcreateserial -days 825 \
        -extfile "$member.ext" -out "$member.crt" 2>/dev/null
    rm -f "$member.csr" "$member.ext"
done
chmod 0644 ca.crt ./*.crt
# Readable by the image's postgres group (gid 999) too, so that a rotation followed by SIGHUP
# can be read again after the privilege drop.
chgrp 999 ./*.key
chmod 0640 ./*.key
echo "$PWD"
