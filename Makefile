# The two commands a fresh machine needs: `make demo` and `make test`.
# Both install whatever is missing first (Debian packages, a Python venv, the tools of
# scripts/versions.env built from their Go modules); re-runs skip what is already there.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-python test-unit test-system test-binary test-via-server test-kubernetes-versions lint build image bench bench-quick clean

setup: $(STAMP)
	@bash scripts/install-tools.sh

$(STAMP): pyproject.toml testbed/pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' -e ./testbed
	touch $(STAMP)

demo: setup image
	@bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests testbed testdata benchmarks packaging scripts
	$(VENV)/bin/ruff format --check src tests testbed testdata benchmarks packaging scripts

# The whole suite: lint, every test against `python -m deviceid_inject`, the API test bed's tests
# again against the other Kubernetes releases in support, then the binary is built and every test
# runs again against it, then the benchmark once in its quick mode. Meanwhile, at the lowest CPU
# priority, `build.sh prepare` makes the build's roots and compiles its Python (the longest stage
# of a cold build): the source suite spends much of its time waiting on servers, and build.sh's
# lock makes `make build` wait for what is left of it. Its log: .build/prepare.log.
test: lint setup
	@mkdir -p .build
	nice -n 19 ./build.sh prepare >.build/prepare.log 2>&1 & prepare=$$!; \
	$(MAKE) test-python test-kubernetes-versions; status=$$?; \
	wait $$prepare || echo "make test: build.sh prepare failed (.build/prepare.log); make build runs it again"; \
	exit $$status
	$(MAKE) test-binary bench-quick

test-python: setup
	$(PY) -m pytest

# The unit tests only (tests/unit: the plugin itself, in process or run, in real netns and veths).
test-unit: setup
	$(PY) -m pytest tests/unit

# The system tests only (tests/system: cnitool, Multus, kube-apiserver, the node, the binary...).
test-system: setup
	$(PY) -m pytest tests/system

# The API test bed's tests (the bridge's RBAC and admission policy, the selection-route policy,
# Multus writing network-status, the bridge) against kube-apiserver of each other release in support
# (KUBERNETES_API_VERSIONS in scripts/versions.env; on 1.35 MutatingAdmissionPolicy's beta is turned
# on as docs/network-status-routes.md says). The node and the rest run on KUBERNETES_VERSION only.
test-kubernetes-versions: setup
	bash scripts/install-tools.sh --api-servers
	set -e; for v in $$(. scripts/versions.env && echo $$KUBERNETES_API_VERSIONS); do \
		DEVICEID_INJECT_KUBE_APISERVER=$$v $(PY) -m pytest \
			tests/system/test_admission.py tests/system/test_bridge.py tests/system/test_multus.py; \
	done

# dist/deviceid-inject: the one-file binary for /opt/cni/bin, built in a cached Debian bullseye
# root with Nuitka (see build.sh; skipped when dist/ is up to date). Needs root and the network.
build:
	./build.sh

# dist/deviceid-inject-image.tar: the image deploy/ runs, as an archive for `ctr images import`,
# `podman load` or `docker load` (packaging/image.py; deploy/Containerfile builds the same image).
image: $(STAMP) build
	$(PY) packaging/image.py deviceid-inject

# The whole suite again, against the binary instead of `python -m deviceid_inject`; the tests on
# the real node (tests/system/test_node.py) run only here, against the image built from it. Then
# the CNI-facing tests once more with every call going through the node's CNI server (started from
# the same binary; a call that fell back instead would fail them: tests/conftest.py, via_server).
# test_multus.py is not among them: its Multus runs in a mount namespace of its own (a private /run
# and /var/lib), where the server rightly hands every call back (docs/cni-server.md).
VIA_SERVER_TESTS := tests/unit/test_cni.py tests/unit/test_netns.py tests/unit/test_bad_input.py \
	tests/system/test_cnitool.py tests/system/test_faults.py tests/system/test_load.py
test-binary: setup build image
	DEVICEID_INJECT_EXE=$(CURDIR)/dist/deviceid-inject $(PY) -m pytest
	DEVICEID_INJECT_EXE=$(CURDIR)/dist/deviceid-inject DEVICEID_INJECT_VIA_SERVER=1 $(PY) -m pytest $(VIA_SERVER_TESTS)

# The same through a server from the sources: packaging/launcher.c built here around
# `python -m deviceid_inject` (not part of `make test`; the binary's run above is what ships).
test-via-server: setup
	DEVICEID_INJECT_VIA_SERVER=1 $(PY) -m pytest $(VIA_SERVER_TESTS)

# ADD/CHECK/DEL medians against Go tuning and the Nuitka floor (benchmarks/bench.py), then the
# network-status bridge on the test bed (benchmarks/bridge_bench.py: device-info latency after
# Multus, the agent's RSS and CPU), python -m deviceid_inject and the binary, in bridge-results.md,
# then Pod start-up on the real node (benchmarks/node_bench.py), with Multus thick's own limits and
# with its daemon's CPU limit raised.
bench: setup build image
	./build.sh hello
	$(PY) benchmarks/bench.py --out benchmarks/results.md
	$(PY) benchmarks/bridge_bench.py --out benchmarks/bridge-results.md
	$(PY) benchmarks/bridge_bench.py --exe dist/deviceid-inject --out benchmarks/bridge-results.md --append
	$(PY) benchmarks/node_bench.py --out benchmarks/node-results.md
	$(PY) benchmarks/node_bench.py --multus-cpu 2 --out benchmarks/node-results-multus-cpu-2.md

bench-quick: setup build image
	./build.sh hello
	$(PY) benchmarks/bench.py --quick
	$(PY) benchmarks/bridge_bench.py --quick --exe dist/deviceid-inject
	$(PY) benchmarks/node_bench.py --quick --multus-cpu 2

clean:
	rm -rf $(VENV) .tools .build dist
