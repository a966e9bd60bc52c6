"""Run inside a test node (tests/system/test_node_admission.py): print every version of every Pod's
downward API `annotations` file as the kubelet writes it, one JSON line each ({"at": wall time, "pod":
UID, "text": ...}), polling every few milliseconds until killed. The kubelet writes these files on a
tmpfs of the node's own mount namespace, so only a process inside it sees them.
"""

from __future__ import annotations

import glob
import json
import sys
import time

PATTERN = "/var/lib/kubelet/pods/*/volumes/kubernetes.io~downward-api/*/annotations"


def main() -> None:
    seen: dict[str, str] = {}
    while True:
        for path in glob.glob(PATTERN):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError:  # the Pod going away, or the kubelet swapping its ..data link
                continue
            pod = path.split("/")[5]
            if seen.get(pod) != text:
                seen[pod] = text
                print(json.dumps({"at": time.time(), "pod": pod, "text": text}), flush=True)
        time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
