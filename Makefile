# Every target installs what it needs: a fresh clone runs `make demo` or `make test` directly.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PEERS_DIR ?= $(HOME)/.cache/secrets-store-csi-peers
export PEERS_DIR
PROTOS := proto/secrets_store_api/provider.proto proto/secrets_store_api/csi.proto
DEB_PACKAGES := iproute2 util-linux mount containerd runc busybox-static buildah mmdebstrap

.PHONY: install deb proto lint peers test test-unit bench demo demo-cluster demo-sync images clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# Debian packages the namespace runner and the driver's mounts need (present on most machines).
deb:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

proto: install
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check csi_driver sync_controller provider_azure keyvault_emulator secrets_store_api demo tests bench testbed
	$(VENV)/bin/mypy

peers:
	tests/peers/build-peers.sh

# The whole suite, inside a private network + mount namespace (tests/netns-run).
test: install deb peers images
	tests/netns-run $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Latency, RSS and (root, cgroup v1) the storm under upstream's provider budget; SVG plots into
# docs/ (matplotlib: the `bench` extra, installed here only).
bench: install peers
	$(VENV)/bin/pip install -q -e '.[bench]'
	tests/netns-run $(PY) -m bench --plots docs $(BENCH_ARGS)

demo: install deb
	tests/netns-run $(PY) -m demo $(DEMO_ARGS)

# The same story through the CSI socket, on a local control plane (etcd, kube-apiserver,
# kube-controller-manager from `make peers`), with a synced Kubernetes Secret.
demo-cluster: install deb peers
	tests/netns-run $(PY) -m demo.cluster $(DEMO_ARGS)

# A Kubernetes Secret from Key Vault with no pod: the SecretSync controller on a local control
# plane (etcd, kube-apiserver, kube-controller-manager, kubectl from `make peers`).
demo-sync: install deb peers
	tests/netns-run $(PY) -m demo.sync $(DEMO_ARGS)

# Container images of both daemons, built with buildah (no Docker engine, no registry).
images: install deb
	daemonset/images/build.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
