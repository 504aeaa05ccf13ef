#!/bin/sh
# Makes the test-only certificates and keys in this folder (never use them elsewhere):
#   app.key (PKCS#8), app-pkcs1.key (PKCS#1), app.crt (valid for a hundred years), app.pem (both),
#   app.pfx (password "quotagate", AES-256), app-3des.pfx (the same with the 3DES and SHA-1
#   of Windows exports), app-expired.crt (same key, expired in 2021),
#   other.key and other.crt (an unrelated application).
# Needs the openssl command (3.0 or later). Run it from anywhere: sh tests/data/make-certs.sh
set -eu
cd "$(dirname "$0")"
export OPENSSL_CONF=/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out app.key
openssl pkey -in app.key -traditional -out app-pkcs1.key
# Version 3 certificates (with extensions), as the identity platform takes them.
v3="-addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature"
# shellcheck disable=SC2086
openssl req -new -x509 -key app.key -subj /CN=quotagate-test-app -days 36500 -sha256 $v3 -out app.crt
cat app.crt app.key > app.pem
openssl pkcs12 -export -in app.crt -inkey app.key -name quotagate-test-app \
    -passout pass:quotagate -out app.pfx
openssl pkcs12 -export -in app.crt -inkey app.key -name quotagate-test-app \
    -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1 \
    -passout pass:quotagate -out app-3des.pfx
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.key
# shellcheck disable=SC2086
openssl req -new -x509 -key other.key -subj /CN=quotagate-test-other -days 36500 -sha256 $v3 -out other.crt

# An expired certificate for app.key: `openssl ca` is the one command of 3.0 that takes
# explicit validity dates.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
touch "$work/index.txt"
cat > "$work/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = any
unique_subject = no
x509_extensions = leaf
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
[any]
commonName = supplied
CNF
echo 01 > "$work/serial"
openssl req -new -key app.key -subj /CN=quotagate-test-app -out "$work/app.csr"
openssl ca -batch -config "$work/ca.cnf" -selfsign -keyfile app.key -in "$work/app.csr" \
    -startdate 20200101000000Z -enddate 20210101000000Z -notext -out app-expired.crt
chmod 600 app.key app-pkcs1.key app.pem app.pfx app-3des.pfx other.key
