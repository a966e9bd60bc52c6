"""The Pod annotations of the multi-network spec that deviceid-inject reads or writes: one name each."""

# The Pod's network selection (text or JSON form), which Multus reads.
NETWORKS = "k8s.v1.cni.cncf.io/networks"
# What Multus writes after attaching the Pod's networks, device-info included when it knew one.
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
# The key every Multus before v4 wrote next to NETWORK_STATUS, with the same value; v4 dropped it.
NETWORKS_STATUS = "k8s.v1.cni.cncf.io/networks-status"

# The API server refuses an object whose annotations (keys and values, in bytes) exceed this
# (apimachinery's TotalAnnotationSizeLimitB).
ANNOTATIONS_LIMIT = 256 * 1024
