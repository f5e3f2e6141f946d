#!/bin/sh
# The S3-compatible server of docker/compose.backup-s3.yaml, for tests and trials, not for
# data you keep: moto's server (in memory) behind HAProxy for HTTPS, with a self-signed
# certificate made at start, and the bucket S3_BUCKET created. pgBackRest requires HTTPS;
# moto's own TLS ends connections without close_notify, which OpenSSL 3 refuses.
set -eu
bucket="${S3_BUCKET:-pgbackrest}"
dir=$(mktemp -d)
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=s3" \
    -keyout "$dir/s3.key" -out "$dir/s3.crt" 2>/dev/null
cat "$dir/s3.crt" "$dir/s3.key" > "$dir/s3.pem"
cat > "$dir/haproxy.cfg" <<CFG
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend s3
  bind :9000 ssl crt $dir/s3.pem
  default_backend moto
backend moto
  server moto 127.0.0.1:9001
CFG
python3 -m moto.server -H 127.0.0.1 -p 9001 &
haproxy -db -f "$dir/haproxy.cfg" &
until curl -skf -X PUT "https://127.0.0.1:9000/$bucket" -o /dev/null; do sleep 0.5; done
echo "s3: bucket $bucket ready on :9000"
wait
