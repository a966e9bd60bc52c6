"""The network-status bridge: a node agent that adds deviceid-inject's device-info to the Pods'
`k8s.v1.cni.cncf.io/network-status` after Multus v4 has written it without one.

Nothing on the CNI path imports this package or its Kubernetes client: the plugin and the
agent share only the state records (state.py) the plugin writes under its dataDir.
"""
