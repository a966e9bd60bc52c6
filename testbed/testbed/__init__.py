"""The test bed: the real parts deviceid-inject's tests and benchmarks drive, and the one way each is
started, waited for and stopped.

- `tools`: where scripts/install-tools.sh put the pinned tools (scripts/versions.env), and the repo.
- `harness`: long-running processes (`Service`) and one-shot commands (`run`), each in a process
  group of its own.
- `helpers`: paths and constants, running the plugin as a runtime would, conflist templates,
  cnitool in an isolated cache, what device-info and dataDir hold.
- `sysfs_builder`: sysfs-shaped fixture trees (testdata/sysfs/, and hosts with many VFs).
- `served`: the node's CNI server and the launcher that is its client.
- `kube`: etcd and kube-apiserver on loopback, and a small client for them.
- `multus`: real Multus run the way containerd runs it, in a private mount namespace.
- `bridge`: the network-status bridge with deploy/'s RBAC and admission policy.
- `admission`: deploy/selection-route on an API server, and Multus's own selection parser.
- `node`, `forward`, `cluster`: a real single-node cluster (kubelet, containerd) in namespaces of
  its own, the forwarder into its netns, and what a user puts on it.

Installed editable by `make setup` (testbed/pyproject.toml); tests/conftest.py holds the fixtures
built on it. Nothing here is shipped.
"""
