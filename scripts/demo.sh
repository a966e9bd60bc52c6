#!/usr/bin/env bash
# The demo: a real ADD, CHECK and DEL through cnitool in a scratch network namespace.
#
# Part 1 runs the chain deviceid-inject lives in: host-device (standing in for akshci-iov or
# sriov: it moves a veth end into the pod as net1) then deviceid-inject. This machine has no
# SR-IOV NIC, so deviceid-inject reads a fixture sysfs tree in which net1 is VF 11 of an
# Intel E810 PF; everything else (netns, veth, cnitool, the result, the file) is real.
# Part 2 points deviceid-inject, with no fixture, at this host's own PCI NIC in the host's
# netns, and shows the address it discovers from the live sysfs and ethtool.
# Part 3 (scripts/demo_node.py) starts a real node (kubelet, containerd, the control plane) in
# namespaces of its own, deploys Multus v4.3.0 thick from its own manifest and deploy/ with
# `kubectl apply -k`, and shows a Pod's network-status as Multus wrote it, then with the bridge's
# device-info, and what the Pod's init container read (the image comes from `make image`).
# Everything it makes is removed on exit, also on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SCRATCH="$(mktemp -d /tmp/deviceid-inject-demo.XXXXXX)"
NS="dit-demo-$$"
HOST_END="dit-dh$$"
POD_END="dit-dp$$"

cleanup() {
    ip netns del "$NS" 2>/dev/null || true
    ip link del "$HOST_END" 2>/dev/null || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

mkdir -p "$SCRATCH/bin" "$SCRATCH/net.d"
if [[ -n "${DEVICEID_INJECT_EXE:-}" ]]; then
    ln -s "$(realpath "$DEVICEID_INJECT_EXE")" "$SCRATCH/bin/deviceid-inject"
else
    printf '#!/bin/sh\nexec %q -m deviceid_inject "$@"\n' "$REPO/.venv/bin/python" > "$SCRATCH/bin/deviceid-inject"
    chmod +x "$SCRATCH/bin/deviceid-inject"
fi
export CNI_PATH="$SCRATCH/bin:$REPO/.tools/cni-bin"
export NETCONFPATH="$SCRATCH/net.d"
export CNI_IFNAME=net1
CNITOOL="$REPO/.tools/cni-bin/cnitool"

ip netns add "$NS"
ip link add "$HOST_END" type veth peer name "$POD_END"

cat > "$NETCONFPATH/n6-dpdk.conflist" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "n6-dpdk",
  "plugins": [
    {"type": "host-device", "device": "$POD_END"},
    {"type": "deviceid-inject",
     "sysfsRoot": "$REPO/testdata/sysfs/vf-iavf",
     "deviceInfoRoot": "$SCRATCH/devinfo",
     "dataDir": "$SCRATCH/state",
     "logFile": "$SCRATCH/deviceid-inject.log",
     "logLevel": "info",
     "capabilities": {"CNIDeviceInfoFile": true, "deviceID": true}}
  ]
}
JSON

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Part 1: cnitool add n6-dpdk /var/run/netns/$NS   (host-device moves $POD_END in as net1)"
"$CNITOOL" add n6-dpdk "/var/run/netns/$NS"
echo
step "The device-info file (no CNIDeviceInfoFile given, as with Multus v4 and no device plugin)"
find "$SCRATCH/devinfo" -type f -printf '%p (mode %m)\n'
cat "$SCRATCH"/devinfo/cni/n6-dpdk-*_net1

step "cnitool check n6-dpdk"
"$CNITOOL" check n6-dpdk "/var/run/netns/$NS" && echo "CHECK passed"

step "cnitool del n6-dpdk"
"$CNITOOL" del n6-dpdk "/var/run/netns/$NS" && echo "DEL passed"
echo "files left in the device-info tree: $(find "$SCRATCH/devinfo" -type f | wc -l)"
echo "records left in dataDir: $(find "$SCRATCH/state" -name '*.json' | wc -l)"

step "What deviceid-inject logged"
cat "$SCRATCH/deviceid-inject.log"

NIC=""
for dev in /sys/class/net/*; do
    if [[ -e "$dev/device" ]]; then NIC="$(basename "$dev")"; break; fi
done
part2() {
step "Part 2: ADD with no fixture, against this host's own $NIC (read only)"
conf() {
    local prev="$1"
    printf '{"cniVersion":"1.1.0","name":"host-nic","type":"deviceid-inject","deviceInfoRoot":"%s","dataDir":"%s","prevResult":%s}' \
        "$SCRATCH/devinfo" "$SCRATCH/state" "$prev"
}
PREV="{\"cniVersion\":\"1.1.0\",\"interfaces\":[{\"name\":\"$NIC\",\"sandbox\":\"/proc/$$/ns/net\"}]}"
export CNI_CONTAINERID=demo-host CNI_NETNS="/proc/$$/ns/net" CNI_IFNAME="$NIC"
RESULT="$(conf "$PREV" | CNI_COMMAND=ADD "$SCRATCH/bin/deviceid-inject")"
echo "$RESULT"
cat "$SCRATCH"/devinfo/cni/host-nic-demo-host_"$NIC"
echo "sysfs says:   $(basename "$(readlink -f "/sys/class/net/$NIC/device/..")")/$(basename "$(readlink -f "/sys/class/net/$NIC/device")")"
if command -v ethtool >/dev/null; then echo "ethtool says: $(ethtool -i "$NIC" | sed -n 's/^bus-info: //p')"; fi
conf "$RESULT" | CNI_COMMAND=CHECK "$SCRATCH/bin/deviceid-inject" && echo "CHECK passed"
conf "$RESULT" | CNI_COMMAND=DEL "$SCRATCH/bin/deviceid-inject" && echo "DEL passed"
}
if [[ -n "$NIC" ]]; then part2; else echo "Part 2 skipped: this host has no PCI-backed netdev"; fi

SCRATCH="$SCRATCH" "$REPO/.venv/bin/python" "$REPO/scripts/demo_node.py"
