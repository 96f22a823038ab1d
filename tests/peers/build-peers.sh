#!/usr/bin/env bash
# Builds the Go-built test peers from the Go module proxy into a cache outside the repo.
# Each peer lives in $PEERS_DIR/<name>-<version>/; a finished build leaves a .ok marker,
# so a second run is a no-op. Usage: build-peers.sh [peer...]  (default: all)
set -euo pipefail

PEERS_DIR=${PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/secrets-store-csi-peers}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CSI_SANITY_VERSION=${CSI_SANITY_VERSION:-v5.6.0}
AZURE_PROVIDER_VERSION=${AZURE_PROVIDER_VERSION:-v1.8.2}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
export GOFLAGS=${GOFLAGS:--mod=mod}
export CGO_ENABLED=0
mkdir -p "$PEERS_DIR"

log() { printf '[peers] %s\n' "$*" >&2; }

# wrapper DIR MODULE VERSION : an empty module that requires MODULE@VERSION, so that
# `go build` works where `go install pkg@version` is refused by the proxy's version list.
wrapper() {
  local dir=$1 mod=$2 ver=$3
  rm -rf "$dir"; mkdir -p "$dir"
  printf 'module peerwrapper\n\ngo 1.26.0\n\nrequire %s %s\n' "$mod" "$ver" >"$dir/go.mod"
}

build_kubernetes() {
  local out="$PEERS_DIR/kubernetes-$K8S_VERSION"
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl) b ok=1
  # Check every binary, not only the marker: an older cache may lack some of them.
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || ok=0; done
  [ -f "$out/.ok" ] && [ $ok = 1 ] && return 0
  log "building ${bins[*]} $K8S_VERSION (cold: ~10 min)"
  local w; w=$(mktemp -d)
  wrapper "$w" k8s.io/kubernetes "$K8S_VERSION"
  local staging_ver="v0.${K8S_VERSION#v1.}"
  # k8s.io/kubernetes points its staging modules at ./staging; pin them to their releases.
  curl -fsSL "${GOPROXY_URL:-https://proxy.golang.org}/k8s.io/kubernetes/@v/$K8S_VERSION.mod" \
    | sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' \
    | grep -vE '^k8s.io/(sample-controller|sample-cli-plugin)$' \
    | while read -r m; do printf 'replace %s => %s %s\n' "$m" "$m" "$staging_ver"; done >>"$w/go.mod"
  mkdir -p "$out"
  (cd "$w" && go build -trimpath -o "$out/" \
      "${bins[@]/#/k8s.io/kubernetes/cmd/}")
  touch "$out/.ok"; rm -rf "$w"
}

build_etcd() {
  local out="$PEERS_DIR/etcd-$ETCD_VERSION"
  [ -f "$out/.ok" ] && return 0
  log "building etcd $ETCD_VERSION"
  local w; w=$(mktemp -d)
  wrapper "$w" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  mkdir -p "$out"
  (cd "$w" && go build -trimpath -o "$out/etcd" go.etcd.io/etcd/server/v3)
  touch "$out/.ok"; rm -rf "$w"
}

build_csi_sanity() {
  local out="$PEERS_DIR/csi-sanity-$CSI_SANITY_VERSION"
  [ -f "$out/.ok" ] && return 0
  log "building csi-sanity $CSI_SANITY_VERSION"
  mkdir -p "$out"
  GOBIN="$out" GOFLAGS= go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_SANITY_VERSION"
  touch "$out/.ok"
}

build_azure_provider() {
  local out="$PEERS_DIR/azure-provider-$AZURE_PROVIDER_VERSION"
  [ -f "$out/.ok" ] && return 0
  log "building the upstream Azure provider $AZURE_PROVIDER_VERSION"
  local mod=github.com/Azure/secrets-store-csi-driver-provider-azure
  local w; w=$(mktemp -d)
  wrapper "$w" "$mod" "$AZURE_PROVIDER_VERSION"
  # Two of its pinned dependencies have no checksum-database entry: verify against the
  # module's own go.sum instead (the module itself is checked against the database).
  local src; src=$(cd "$w" && GOFLAGS= go mod download -json "$mod@$AZURE_PROVIDER_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  cp "$src/go.sum" "$w/go.sum"; chmod u+w "$w/go.sum"
  (cd "$w" && GOFLAGS=-mod=mod GONOSUMDB="*" GONOSUMCHECK=1 go mod download "$mod" >/dev/null 2>&1 || true)
  mkdir -p "$out"
  (cd "$w" && GONOSUMDB="*" go build -trimpath \
      -ldflags "-X $mod/pkg/version.BuildVersion=$AZURE_PROVIDER_VERSION" \
      -o "$out/secrets-store-csi-driver-provider-azure" "$mod/cmd")
  touch "$out/.ok"; rm -rf "$w"
}

build_helm() {
  local out="$PEERS_DIR/helm-$HELM_VERSION"
  [ -f "$out/.ok" ] && [ -x "$out/helm" ] && return 0
  log "building helm $HELM_VERSION (cold: ~5 min)"
  # A wrapper module rather than `go install helm.sh/helm/v3/cmd/helm@VERSION`: the proxy may
  # refuse the module's version list, which `go install pkg@version` reads.
  local mod=helm.sh/helm/v3
  local w; w=$(mktemp -d)
  wrapper "$w" "$mod" "$HELM_VERSION"
  mkdir -p "$out"
  (cd "$w" && go build -trimpath \
      -ldflags "-X $mod/internal/version.version=$HELM_VERSION" \
      -o "$out/helm" "$mod/cmd/helm")
  touch "$out/.ok"; rm -rf "$w"
}

peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(etcd csi-sanity azure-provider helm kubernetes)
for p in "${peers[@]}"; do
  case "$p" in
    kubernetes) build_kubernetes ;;
    etcd) build_etcd ;;
    csi-sanity) build_csi_sanity ;;
    azure-provider) build_azure_provider ;;
    helm) build_helm ;;
    *) echo "unknown peer: $p" >&2; exit 2 ;;
  esac
done
log "peers ready in $PEERS_DIR"
