#!/bin/sh
# Certificates for etcd with client-certificate TLS, and weft's client certificate:
#   ca.pem, ca.key          the CA (keep ca.key offline; etcd and weft need only ca.pem)
#   server.pem, server.key  etcd's server certificate (etcd --cert-file, --key-file)
#   client.pem, client.key  weft's client certificate (--etcd-certfile, --etcd-keyfile)
#
# Usage: etcd-certs.sh DIR NAMES
#   DIR    a new directory to write into
#   NAMES  every name and address clients use to reach etcd, as subjectAltName entries,
#          for example "DNS:etcd-0.example.internal,IP:10.0.0.5,IP:127.0.0.1"
# DAYS (environment, default 825) sets how long the certificates are valid.
set -eu
dir=$1
names=$2
days=${DAYS:-825}
curve="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

mkdir "$dir"
cd "$dir"
umask 077

# The CA: may sign certificates, nothing else.
openssl req -x509 $curve -keyout ca.key -out ca.pem -days "$days" \
  -subj "/CN=etcd CA for weft" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

# etcd's server certificate: valid for every name in NAMES. etcd also connects to itself
# with it (its gRPC gateway), so it is a client certificate too.
openssl req -new $curve -keyout server.key -out server.csr -subj "/CN=etcd"
cat > server.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$names
EOF
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -days "$days" -extfile server.ext -out server.pem

# weft's client certificate: for TLS clients only (etcd refuses one without clientAuth).
openssl req -new $curve -keyout client.key -out client.csr -subj "/CN=weft"
cat > client.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EOF
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -days "$days" -extfile client.ext -out client.pem

rm -f server.csr server.ext client.csr client.ext ca.srl
chmod 0644 ca.pem server.pem client.pem
