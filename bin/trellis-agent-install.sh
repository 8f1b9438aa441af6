#!/bin/sh
# Trellis agent installer. The hub serves this file, unchanged, at https://HUB:7445/agent/install.sh:
# nothing in it comes from a request. Run it as root with:
#   TRELLIS_JOIN_TOKEN  join token from `trellis tokens create` (required; never put on disk or in argv)
#   TRELLIS_HUB         hub admin address HOST:PORT, e.g. hub.example.com:7444 (required)
#   TRELLIS_WEB         hub web address, default https://HOST:7445 (HOST from TRELLIS_HUB)
#   TRELLIS_CA_FILE     the hub CA, already fetched and checked (optional: else fetched and checked here)
#   TRELLIS_PREFIX      where the bundle is unpacked, default /opt/trellis (-> PREFIX/trellis-<version>)
#   TRELLIS_BIN_DIR     where the `trellis` link goes, default /usr/local/bin
#   TRELLIS_NODE        the node binary (>= 20), default `node` on PATH
# Arguments are passed to `trellis agent install` (e.g. --label role=web, --service NAME, --detach).
#
# It pins the hub CA from the join token (the SHA-256 of the CA certificate's DER is the token's last
# field) before it downloads anything else, checks the bundle against its SHA-256, unpacks it, links
# bin/trellis and runs `trellis agent install --hub "$TRELLIS_HUB" ARGS` with the token in its environment.
set -eu
umask 022

say() { printf 'trellis-install: %s\n' "$*" >&2; }
die() { printf 'trellis-install: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it unpacks under /opt, links into /usr/local/bin and installs a system service"
token=${TRELLIS_JOIN_TOKEN:-}
[ -n "$token" ] || die "set TRELLIS_JOIN_TOKEN to a join token from \`trellis tokens create\`"
case $token in
  tj1.*.*.*) ;;
  *) die "TRELLIS_JOIN_TOKEN is not a join token (tj1.<id>.<secret>.<ca-sha256>)" ;;
esac
pin=${token##*.}
case $pin in
  *[!0-9a-f]* | '') die "the join token's CA fingerprint is not lower-case hex" ;;
esac
[ "${#pin}" -eq 64 ] || die "the join token's CA fingerprint is not 64 hex characters"
hub=${TRELLIS_HUB:-}
[ -n "$hub" ] || die "set TRELLIS_HUB to the hub admin address HOST:PORT (e.g. hub.example.com:7444)"
web=${TRELLIS_WEB:-https://${hub%:*}:7445}
case $web in
  https://*) ;;
  *) die "TRELLIS_WEB must be an https:// address" ;;
esac
web=${web%/}
prefix=${TRELLIS_PREFIX:-/opt/trellis}
bindir=${TRELLIS_BIN_DIR:-/usr/local/bin}
node=${TRELLIS_NODE:-node}

for c in curl tar sha256sum base64 awk mktemp; do
  command -v "$c" >/dev/null 2>&1 || die "$c is needed (coreutils, curl, tar, awk)"
done
command -v "$node" >/dev/null 2>&1 || die "node is needed: install Node.js 20 or later (or set TRELLIS_NODE)"
major=$("$node" -p 'process.versions.node.split(".")[0]' 2>/dev/null) || die "cannot run $node"
case $major in
  '' | *[!0-9]*) die "cannot tell the version of $node" ;;
esac
[ "$major" -ge 20 ] || die "$node is Node.js $major: Trellis needs Node.js 20 or later"

tmp=$(mktemp -d)
stage=
trap 'rm -rf "$tmp" ${stage:+"$stage"}' EXIT
trap 'exit 130' INT TERM

# The first certificate of a PEM file, alone: the one the token pins. Only it is ever trusted
# (curl --cacert trusts every certificate in its file, so whatever follows it is dropped: an
# impostor could serve the hub's public CA certificate followed by its own).
firstcert() {
  awk '/-----BEGIN CERTIFICATE-----/ { f = 1 } f { print } /-----END CERTIFICATE-----/ { if (f) exit }' "$1"
}
# SHA-256 of the DER of a one-certificate PEM file.
fingerprint() {
  awk '/-----/ { next } { print }' "$1" | base64 -d | sha256sum | cut -c1-64
}

if [ -n "${TRELLIS_CA_FILE:-}" ]; then
  [ -r "$TRELLIS_CA_FILE" ] || die "cannot read TRELLIS_CA_FILE $TRELLIS_CA_FILE"
  firstcert "$TRELLIS_CA_FILE" >"$tmp/ca.pem"
else
  # Not trusted yet (-k): it is trusted below only if its fingerprint is the one in the token.
  curl -fsS -k --proto =https -o "$tmp/served.pem" "$web/agent/ca.pem" || die "cannot fetch the hub CA from $web/agent/ca.pem"
  firstcert "$tmp/served.pem" >"$tmp/ca.pem"
fi
[ -s "$tmp/ca.pem" ] && [ "$(fingerprint "$tmp/ca.pem")" = "$pin" ] ||
  die "the hub at $web does not present the CA pinned in the join token: nothing was downloaded or installed (check TRELLIS_WEB, or that the token came from this hub)"

fetch() {
  curl -fsS --proto =https --cacert "$tmp/ca.pem" -o "$tmp/$1" "$web/agent/$1" || die "cannot download $web/agent/$1"
}
fetch bundle.tgz.sha256
fetch bundle.tgz
want=$(cut -c1-64 "$tmp/bundle.tgz.sha256")
got=$(sha256sum "$tmp/bundle.tgz" | cut -c1-64)
[ "$want" = "$got" ] || die "bundle.tgz does not match its SHA-256 (got $got, want $want): refused, nothing installed"
say "bundle sha256:$got verified"

mkdir -p "$prefix"
chmod 755 "$prefix"
stage=$(mktemp -d "$prefix/.unpack.XXXXXX")
tar --no-same-owner -xzf "$tmp/bundle.tgz" -C "$stage" || die "cannot unpack the bundle into $prefix"
top=$(ls "$stage")
case $top in
  trellis-[0-9]*) ;;
  *) die "unexpected bundle layout (want one folder trellis-<version>/)" ;;
esac
[ -f "$stage/$top/bin/trellis.js" ] || die "unexpected bundle layout (no $top/bin/trellis.js)"
chmod -R u+rwX,go+rX,go-w "$stage/$top"
printf '%s\n' "$got" >"$stage/$top/.bundle-sha256"
dest=$prefix/$top
if [ -f "$dest/.bundle-sha256" ] && [ "$(cat "$dest/.bundle-sha256")" = "$got" ]; then
  say "$dest already holds this bundle"
else
  [ ! -e "$dest" ] || mv "$dest" "$stage/previous"
  mv "$stage/$top" "$dest"
  say "unpacked $dest"
fi
rm -rf "$stage"
stage=
mkdir -p "$bindir"
ln -sfn "$dest/bin/trellis" "$bindir/trellis"
say "linked $bindir/trellis -> $dest/bin/trellis"

# The token stays in the environment (TRELLIS_JOIN_TOKEN): never in argv.
set +e
"$node" "$dest/bin/trellis.js" agent install --hub "$hub" "$@"
rc=$?
exit "$rc"
