"""The harness every test tier, the benchmarks and the demos share (not shipped in the wheels).

Processes: the Key Vault emulator (emulator.py; raw HTTP to it in kvhttp.py), the driver
(driver.py), a provider, ours, the upstream Go one or the fake (provider.py, fake_provider.py;
Mount attributes as the driver builds them in mount_attributes.py); the control plane
(controlplane.py); a harness that plays kubelet (kubelet.py); a real node with kubelet and
containerd (node.py, node_config.py, rundir.py, registrar.py, images.py); where the Go-built
peers are (peers.py). It runs from a checkout: paths below REPO (tests/emulator/seed.yaml,
daemonset/) are read in place.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
