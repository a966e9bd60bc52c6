// Command parse-selection runs Multus's own parser of a Pod's network selection on each line of its
// stdin and prints what Multus makes of it, one JSON line each, so that tests can hold the admission
// policy of deploy/selection-route against the real thing (tests/system/test_admission.py).
//
// It is built inside a copy of each Multus v4 module at its exact version, as Multus's own commands
// are (scripts/install-tools.sh, build_module_copy with FILE=), so it links that version's
// pkg/k8sclient with that version's dependencies.
//
// In:  {"namespace": "<the Pod's namespace>", "networks": "<the k8s.v1.cni.cncf.io/networks value>"}
// Out: {"ok": true, "networks": [<NetworkSelectionElement as Multus's JSON tags name its fields>]}
// or   {"ok": false, "error": "<Multus's error>"}
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"gopkg.in/k8snetworkplumbingwg/multus-cni.v4/pkg/k8sclient"
	"gopkg.in/k8snetworkplumbingwg/multus-cni.v4/pkg/logging"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type query struct {
	Namespace string `json:"namespace"`
	Networks  string `json:"networks"`
}

type answer struct {
	OK       bool        `json:"ok"`
	Networks interface{} `json:"networks,omitempty"`
	Error    string      `json:"error,omitempty"`
}

func main() {
	// Multus logs every parse error on stderr too; the answer carries it.
	logging.SetLogStderr(false)
	logging.SetLogLevel("panic")
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var q query
		if err := json.Unmarshal(in.Bytes(), &q); err != nil {
			fmt.Fprintf(os.Stderr, "parse-selection: not a query: %v\n", err)
			os.Exit(2)
		}
		// GetPodNetwork is what Multus runs on a Pod: the annotation, the Pod's namespace as default.
		pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name:        "selection",
			Namespace:   q.Namespace,
			Annotations: map[string]string{"k8s.v1.cni.cncf.io/networks": q.Networks},
		}}
		networks, err := k8sclient.GetPodNetwork(pod)
		a := answer{OK: err == nil, Networks: networks}
		if err != nil {
			a.Networks, a.Error = nil, err.Error()
		}
		if err := out.Encode(a); err != nil {
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "parse-selection: %v\n", err)
		os.Exit(2)
	}
}
