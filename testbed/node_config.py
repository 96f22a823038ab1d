"""The configuration files of the test node's containerd and kubelet."""

from __future__ import annotations

from pathlib import Path

from testbed.ports import free_port

NODE_IP = "198.51.100.10"  # TEST-NET on lo: kubelet refuses a loopback node IP


def containerd_config(d: Path, sock: Path) -> str:
    """containerd 1.6's config: everything under `d`, CRI with runc and the sandbox image."""
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"
[debug]
  address = "{d / "debug.sock"}"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d / "cni-bin"}"
    conf_dir = "{d / "cni-conf"}"
"""


def kubelet_config(cgroup_root: str, containerd_sock: Path, pod_logs: Path) -> dict[str, object]:
    """The KubeletConfiguration of the test node (TEST-NET address, no eviction, fast status)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "address": NODE_IP,
        "port": free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{containerd_sock}",
        "podLogsDir": str(pod_logs),
        "resolvConf": "",
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "1h",
        "nodeStatusUpdateFrequency": "2s",
        "registerNode": True,
        "staticPodPath": "",
        "localStorageCapacityIsolation": False,
        "shutdownGracePeriod": "0s",
    }
