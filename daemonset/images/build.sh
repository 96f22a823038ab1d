#!/usr/bin/env bash
# Builds the two container images without a Docker engine or a container registry:
#   secrets-store-csi-python/driver:<version>         (ENTRYPOINT secrets-store-csi-driver)
#   secrets-store-csi-python/provider-azure:<version> (ENTRYPOINT secrets-store-provider-azure)
# <version> is pyproject.toml's. Needs root, buildah and mmdebstrap (`make deb`), network to
# the Debian mirror and to PyPI (cold build only).
#
# 1. Two Debian bookworm root filesystems made with mmdebstrap from Debian's packages, the
#    recipe (suite, variant, package list, dpkg filters) below. Each tarball is cached outside
#    the repo under a name that hashes the recipe, so changing the recipe rebuilds it and
#    nothing else does; the package versions each holds, and the Release date of each Debian
#    archive used, are written next to it (*.packages).
#    They become the base images localhost/secrets-store-csi-python/{base,builder}:bookworm-<hash>.
# 2. `buildah build --isolation chroot` of daemonset/images/<image>.Containerfile: a builder
#    stage installs the hashed lock file and the project's wheel into /opt/venv, the runtime
#    stage copies only that venv onto the base.
# An image whose inputs (this script, Containerfile, ignore file, lock files, sources, base,
# version) are unchanged is not rebuilt: their hash is stored in the image's label
# secrets-store-csi-python.inputs and compared first. FORCE=1 rebuilds the images anyway;
# REFRESH_BASE=1 rebuilds the base root filesystems too (to pick up Debian updates).
#
# Environment: STORAGE_DRIVER (default vfs, which needs no kernel overlay support; use the same
# one for every buildah command on these images),
# IMAGES_CACHE (default ~/.cache/secrets-store-csi-images), IMAGE_PREFIX (default
# secrets-store-csi-python), IMAGE_SOURCE (the org.opencontainers.image.source label; default
# the git remote `origin`). Arguments: [--check] then image names (driver, provider-azure; default
# both). --check builds nothing and exits 3 when an image is missing or out of date.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
export BUILDAH_ISOLATION=chroot
cache=${IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secrets-store-csi-images}
prefix=${IMAGE_PREFIX:-secrets-store-csi-python}
suite=bookworm
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
[ -n "$version" ] || { echo "build.sh: no version in pyproject.toml" >&2; exit 1; }

say() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap and buildah with chroot isolation need it)"
for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || die "$tool is missing: run \`make deb\` (apt-get install $tool)"
done

# The base recipes. `essential` is Debian's Essential:yes set without apt; the merged-usr hook
# installs usr-is-merged (the usrmerge package would drag perl in); libstdc++6 is for grpcio's
# extension; documentation, manual pages and translations are left out, copyright files kept.
recipe_common=(
  --variant=essential
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
)
declare -A base_packages=(
  [base]=python3,libstdc++6,ca-certificates
  [builder]=python3,libstdc++6,ca-certificates,python3-venv
)

# base_setup NAME: the recipe and the cache paths of one base (globals recipe, key, tarball,
# packages, image, log).
base_setup() {
  local name=$1
  recipe=("${recipe_common[@]}" --include="${base_packages[$name]}" "$suite")
  # (v3: the .packages file starts with the Debian archives' Release dates)
  key=$(printf '%s\n' mmdebstrap-v3 "${recipe[@]}" | sha256sum | cut -c1-12)
  tarball="$cache/$name-$suite-$key.tar"
  packages="$cache/$name-$suite-$key.packages"
  log="$cache/$name-$suite-$key.log"
  image="localhost/$prefix/$name:$suite-$key"
}

# base_rootfs NAME: make the root filesystem tarball unless it is cached.
base_rootfs() {
  local name=$1 start=$SECONDS
  base_setup "$name"
  [ "${REFRESH_BASE:-}" != 1 ] || rm -f "$tarball"
  [ ! -s "$tarball" ] || return 0
  say "base $name: mmdebstrap ${recipe[*]}"
  mkdir -p "$cache"
  if ! mmdebstrap --format=tar "${recipe[@]}" "$tarball.tmp" \
    --customize-hook='{ for f in "$1"/var/lib/apt/lists/*_InRelease; do
        printf "# %s: %s\n" "$(sed -n "s/^Codename: //p" "$f")" "$(sed -n "s/^Date: //p" "$f")"
      done; chroot "$1" dpkg-query -W -f "\${Package}=\${Version}\n"; } >"$1/.packages"' \
    --customize-hook="copy-out /.packages $cache/$name.tmp" \
    --customize-hook='rm "$1/.packages"' >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "mmdebstrap failed for the $name rootfs (log: $log)"
  fi
  mv "$cache/$name.tmp/.packages" "$packages"
  rmdir "$cache/$name.tmp"
  mv "$tarball.tmp" "$tarball"
  # earlier recipes' files
  find "$cache" -maxdepth 1 -name "$name-$suite-*" ! -name "$name-$suite-$key.*" -delete
  say "base $name: rootfs $(du -m "$tarball" | cut -f1) MB, $(grep -vc '^#' "$packages") packages, in $((SECONDS - start)) s"
}

# base_image NAME: print the base image's name, importing the tarball when the image is missing.
base_image() {
  local name=$1 ctr
  base_setup "$name"
  if [ "${REFRESH_BASE:-}" = 1 ] || ! buildah inspect --type image "$image" >/dev/null 2>&1; then
    buildah rmi "$image" >/dev/null 2>&1 || true
    say "base $name: importing $tarball as $image"
    ctr=$(buildah from --quiet scratch)
    buildah add --quiet "$ctr" "$tarball" / >/dev/null
    buildah config --label "secrets-store-csi-python.base.recipe=mmdebstrap ${recipe[*]}" \
      --label "secrets-store-csi-python.base.packages-sha256=$(sha256sum <"$packages" | cut -c1-64)" \
      --label "secrets-store-csi-python.base.debian-archives=$(sed -n 's/^# //p' "$packages" | paste -sd';' -)" \
      "$ctr"
    buildah commit --quiet --rm "$ctr" "$image" >/dev/null
  fi
  printf '%s\n' "$image"
}

# inputs_hash IMAGE BASE BUILDER: one hash over everything that goes into the image.
inputs_hash() {
  local image=$1 pkg
  case $image in
    driver) pkg=csi_driver ;;
    provider-azure) pkg=provider_azure ;;
  esac
  {
    printf '%s\n' "version=$version" "base=$2" "builder=$3" "prefix=$prefix"
    buildah inspect --type image --format '{{.FromImageID}}' "$2"
    buildah inspect --type image --format '{{.FromImageID}}' "$3"
    find "$here/build.sh" "$here/$image.Containerfile" "$here/$image.ignore" "$here"/*.lock.txt pyproject.toml \
      README.md secrets_store_api "$pkg" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-64
}

check=
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(driver provider-azure)
for image in "${images[@]}"; do
  [ -f "$here/$image.Containerfile" ] || die "unknown image '$image' (driver or provider-azure)"
done

total_start=$SECONDS
# One build at a time on this machine (several `make test` may run at once).
mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock --nonblock 9; then
  say "waiting for another build.sh to finish"
  flock 9
fi
# --check: build nothing; exit 0 when every image is up to date, 3 when one would be built.
if [ -n "$check" ]; then
  status=0
  for name in base builder; do
    base_setup "$name"
    if ! buildah inspect --type image "$image" >/dev/null 2>&1; then
      say "base $name: $image missing"
      status=3
    fi
  done
  [ "$status" = 0 ] || exit "$status"
  base_setup base && base=$image
  base_setup builder && builder=$image
  for image in "${images[@]}"; do
    name="$prefix/$image:$version"
    inputs=$(inputs_hash "$image" "$base" "$builder")
    current=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "secrets-store-csi-python.inputs"}}' "localhost/$name" 2>/dev/null || true)
    if [ "$current" = "$inputs" ]; then
      say "$name: up to date (inputs ${inputs:0:12})"
    else
      say "$name: would be built (inputs ${inputs:0:12}, image has ${current:-none})"
      status=3
    fi
  done
  exit "$status"
fi
# Both root filesystems at once (mostly downloads and dpkg): about 60 s cold.
base_rootfs base &
base_pid=$!
base_rootfs builder &
builder_pid=$!
wait "$base_pid" || die "the base rootfs failed"
wait "$builder_pid" || die "the builder rootfs failed"
base=$(base_image base)
builder=$(base_image builder)

source_url=${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || printf '%s' "$root")}
case $source_url in /*) source_url="file://$source_url" ;; esac  # a clone of a local path
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain -- secrets_store_api csi_driver provider_azure pyproject.toml daemonset/images 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi

# pip inside the build reaches PyPI; a machine behind a TLS-inspecting proxy trusts its CA
# through PIP_CERT (or pip.conf's cert): that bundle is mounted read-only into the build.
pip_args=()
pip_cert=${PIP_CERT:-$(sed -n 's/^\s*cert\s*=\s*//p' /etc/pip.conf 2>/dev/null | head -n1)}
if [ -n "$pip_cert" ] && [ -f "$pip_cert" ]; then
  pip_args+=(--volume "$pip_cert:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
pip_args+=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}")

for image in "${images[@]}"; do
  name="$prefix/$image:$version"
  inputs=$(inputs_hash "$image" "$base" "$builder")
  current=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "secrets-store-csi-python.inputs"}}' "localhost/$name" 2>/dev/null || true)
  if [ "${FORCE:-}" != 1 ] && [ "$current" = "$inputs" ]; then
    say "$name: up to date (inputs ${inputs:0:12})"
    continue
  fi
  say "$name: building (inputs ${inputs:0:12})"
  start=$SECONDS
  old_id=$(buildah inspect --type image --format '{{.FromImageID}}' "localhost/$name" 2>/dev/null || true)
  buildah build --quiet --isolation chroot \
    --file "$here/$image.Containerfile" --ignorefile "$here/$image.ignore" \
    --build-arg "BASE_IMAGE=$base" --build-arg "BUILDER_IMAGE=$builder" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url" \
    --label "secrets-store-csi-python.inputs=$inputs" \
    "${pip_args[@]}" --tag "$name" "$root" >"$cache/$image.build.log" 2>&1 || {
    tail -n 40 "$cache/$image.build.log" >&2
    die "building $name failed (log: $cache/$image.build.log)"
  }
  new_id=$(buildah inspect --type image --format '{{.FromImageID}}' "localhost/$name")
  if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    buildah rmi "$old_id" >/dev/null 2>&1 || true
  fi
  size=$(buildah images --format '{{.Size}}' "localhost/$name" | head -n1)
  say "$name: built in $((SECONDS - start)) s, $size"
done
# Base images of earlier recipes (in use by nothing now), then the builder stage's layers.
buildah images --format '{{.Name}}:{{.Tag}}' | grep -E "^localhost/$prefix/(base|builder):" |
  grep -vxF -e "$base" -e "$builder" | xargs -r buildah rmi >/dev/null 2>&1 || true
# The builder stage's layers are untagged images: drop them (vfs stores each as a full copy).
[ -z "$(buildah images --quiet --filter dangling=true 2>/dev/null)" ] ||
  buildah rmi --prune >/dev/null 2>&1 || true
say "done in $((SECONDS - total_start)) s: $(printf '%s ' "${images[@]/#/$prefix/}" | sed "s/ /:$version /g")"
