# nodecreds — run `make` (or `make help`) for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/nodecreds
IMAGE     ?=

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/nodecreds (static)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nodecreds

.PHONY: lint
lint: golangci-lint ## gofmt, go vet and golangci-lint (.golangci.yml) on every module; no build outputs tracked (files over 1 MiB, binaries)
	./scripts/check-tracked.sh
	@out=$$(gofmt -l cmd internal test scripts); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd test/consumers && $(GO) vet ./... && $(GO) vet -tags nodee2e ./...
	cd scripts/chart && $(GO) vet ./...
	cd test/alerts && $(GO) vet ./...
	$(GOLANGCI_LINT) run ./...
	cd test/consumers && $(GOLANGCI_LINT) run --config $(CURDIR)/.golangci.yml --build-tags nodee2e ./...
	cd scripts/chart && $(GOLANGCI_LINT) run --config $(CURDIR)/.golangci.yml ./...
	cd test/alerts && $(GOLANGCI_LINT) run --config $(CURDIR)/.golangci.yml ./...

# golangci-lint is built once from its Go module (pinned here) into a
# git-ignored folder; a new version is a new folder.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(CURDIR)/_output/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint

.PHONY: golangci-lint
golangci-lint: ## Build golangci-lint $(GOLANGCI_LINT_VERSION) from its Go module into _output/tools (once)
	@[ -x $(GOLANGCI_LINT) ] || { echo ">> building golangci-lint $(GOLANGCI_LINT_VERSION) (once, ~4 min)"; \
		GOBIN=$(dir $(GOLANGCI_LINT)) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); }

.PHONY: deps
deps: ## Install the Debian packages the tests use (docker-registry, apache2-utils, skopeo)
	./scripts/deps.sh

.PHONY: controlplane
controlplane: ## Build etcd and kube-apiserver from Go modules into bin/ (cached)
	./scripts/controlplane/build.sh etcd kube-apiserver

.PHONY: controllers
controllers: controlplane ## Build kube-controller-manager and kube-scheduler from Go modules into bin/ (cached; the DaemonSet and node-pool tests run them)
	./scripts/controlplane/build.sh kube-controller-manager kube-scheduler

.PHONY: kubectl
kubectl: ## Build kubectl from the control plane's Kubernetes release into bin/ (cached; the kubectl plugin's test runs it, never the machine's)
	./scripts/controlplane/build.sh kubectl

.PHONY: node-components
node-components: controllers ## Build the kubelet too (cached)
	./scripts/controlplane/build.sh kubelet

.PHONY: e2e-node
e2e-node: deps node-components image ## The seed scenario on a real kubelet + containerd (root; ~8 min, mostly the kubelet's 5-minute cache); runs the image make image built
	mkdir -p _output && cd test/consumers && NODE_E2E_RESULTS=$(CURDIR)/_output/real-node-results.txt $(GO) test -tags nodee2e -count=1 -timeout 20m -run TestRealNode -v ./...

# The chart tool is its own Go module (Helm is no requirement of the
# product's), so it is built from there and run from here.
CHART := bin/chart

.PHONY: chart-tool
chart-tool: ## Build bin/chart, which renders, lints and packages the Helm chart (scripts/chart, its own Go module)
	$(GO) -C scripts/chart build -o $(CURDIR)/$(CHART) .

.PHONY: manifests
manifests: chart-tool ## Regenerate deploy/daemonset.yaml from the Helm chart (a test fails when they drift)
	$(CHART) manifest > deploy/daemonset.yaml

.PHONY: unit
unit: ## Unit tests only: no control plane, no binaries built (run as root: some give files away with chown; well under a minute warm)
	$(GO) test -race -count=1 -short ./internal/... ./cmd/...

.PHONY: e2e
e2e: controllers test-noexchange ## Every test of the main module, the real API server ones included
	$(GO) test -race -count=1 -timeout 20m ./...

.PHONY: test-noexchange
test-noexchange: ## The file engine's and the agent's tests with renameat2's RENAME_EXCHANGE and RENAME_NOREPLACE switched off, as on a file system without them (-tags noexchange)
	$(GO) test -race -count=1 -tags noexchange ./internal/hostfs/... ./internal/nodefile/... ./internal/agent/...

.PHONY: test-faults
test-faults: controlplane ## The slow fault tests alone (kill -9, full disk, read-only, API outage, concurrent writer)
	$(GO) test -race -count=1 -timeout 20m -run 'TestFault|TestBadInput' -v ./test/

.PHONY: soak
soak: controlplane ## One agent through 1000 rotations (drift, deleted target, API server restart); samples memory, goroutines, fds; writes docs/benchmarks.md (ROTATIONS=1000)
	$(GO) run ./test/soak/cmd/soak -rotations $(or $(ROTATIONS),1000) -every 50

.PHONY: compat
compat: deps controlplane kubectl ## Real consumers: the kubelet's credential code (node pools on a real API server too), a real registry, skopeo, the release bundle (kubectl nodecreds through a real kubectl)
	cd test/consumers && $(GO) test -count=1 ./...

.PHONY: alerts
alerts: ## The chart's alert rules through Prometheus' own rule engine (promtool's test format, test/alerts/testdata), the dashboard against Grafana's schema, both against the agent's metrics (test/alerts, its own Go module)
	cd test/alerts && $(GO) test -count=1 ./...

.PHONY: fuzz
# A count of inputs, not a duration: go1.26's fuzzing coordinator can fail a
# -fuzztime=<duration> run with "context deadline exceeded" as the time runs
# out, with no failing input (golang/go#75804, fixed in go1.27).
fuzz: ## Fuzz the credentials parser, the redaction of keys, the node file's parse/encode and the JSON walker against encoding/json, the kubelet file and shapes against the kubelet's own code, and the hosts.toml merge against containerd's hosts parser briefly: a fixed number of inputs each, about 10 s (FUZZTIME=30s or =1000000x overrides)
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(or $(FUZZTIME),400000x) ./internal/dockercfg
	$(GO) test -run='^$$' -fuzz='^FuzzSafeKey$$' -fuzztime=$(or $(FUZZTIME),300000x) ./internal/dockercfg
	$(GO) test -run='^$$' -fuzz=FuzzSafeKeyURLUserInfo -fuzztime=$(or $(FUZZTIME),400000x) ./internal/dockercfg
	$(GO) test -run='^$$' -fuzz=FuzzDocument -fuzztime=$(or $(FUZZTIME),120000x) ./internal/nodefile
	$(GO) test -run='^$$' -fuzz=FuzzWalk -fuzztime=$(or $(FUZZTIME),800000x) ./internal/jsonwalk
	$(GO) test -run='^$$' -fuzz=FuzzFold -fuzztime=$(or $(FUZZTIME),30000x) ./internal/jsonwalk
	$(GO) test -run='^$$' -fuzz=FuzzMergeRestore -fuzztime=$(or $(FUZZTIME),300000x) ./internal/hoststoml
	cd test/consumers && $(GO) test -run='^$$' -fuzz=FuzzKubeletAgreesWithSecret -fuzztime=$(or $(FUZZTIME),5000x) .
	cd test/consumers && $(GO) test -run='^$$' -fuzz=FuzzKubeletShapes -fuzztime=$(or $(FUZZTIME),5000x) .
	cd test/consumers && $(GO) test -run='^$$' -fuzz=FuzzHostsTOMLMerge -fuzztime=$(or $(FUZZTIME),5000x) .

.PHONY: test
TEST_SUITES := lint e2e compat alerts e2e-node fuzz

test: ## Everything: lint, unit, e2e, compatibility, alert rules and dashboard, the real node, fuzz; prints the minutes each took
	@set -e; total=$$(date +%s); \
	for t in $(TEST_SUITES); do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory $$t || { echo ">> make $$t failed after $$(( ($$(date +%s) - start) / 60 )) min"; exit 1; }; \
		echo ">> make $$t took $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"; \
	done; \
	echo "make test: all suites passed in $$(( ($$(date +%s) - total) / 60 )) min"

.PHONY: bench
bench: build controlplane ## Measure N agents (BENCH_AGENTS=100) on a local control plane; writes docs/benchmarks.md
	$(GO) run ./scripts/bench

BENCH_CURVE ?= 10,100,500

.PHONY: bench-curve
bench-curve: build controlplane ## The cost curve: BENCH_CURVE agent counts (default 10,100,500) one after another; writes its section of docs/benchmarks.md (~15 min)
	BENCH_CURVE=$(BENCH_CURVE) $(GO) run ./scripts/bench

.PHONY: fleet
fleet: controlplane chart-tool ## A hollow fleet (root): N real agents (N=1000) in a few processes, each its own connection, token, Node, tmpfs root and kubelet watch, against one local API server (priority and fairness on) pinned to one CPU; results in _output/fleet (FLEET_ARGS=-restart -flowcontrol -rotations 5); ~2 min at 1,000
	$(GO) run ./scripts/fleet -agents $(or $(N),1000) $(FLEET_ARGS)

.PHONY: fleet-table
fleet-table: ## Write the results in _output/fleet into docs/scale.md's measured table
	$(GO) run ./scripts/fleet -table

.PHONY: demo
demo: build controlplane ## Local control plane + agent + a Secret rotation seen on disk
	$(GO) run ./scripts/demo

.PHONY: demo-dir
demo-dir: build ## The agent on a mounted-Secret folder only (no control plane)
	./scripts/demo-dir.sh

.PHONY: image
image: ## Build the image without a Docker engine: OCI layout at _output/image, linux/amd64 + linux/arm64
	$(GO) run ./scripts/image build -version $(VERSION) -out _output/image

.PHONY: push
push: ## Push the image index to IMAGE=host[:port]/repo:tag; prints IMAGE@sha256:...
	@[ -n "$(IMAGE)" ] || { echo "usage: make push IMAGE=host[:port]/repo:tag"; exit 2; }
	@$(MAKE) --no-print-directory image >&2
	@$(GO) run ./scripts/image push -layout _output/image $(IMAGE)

# RELEASE_URL is where a release's files are downloaded from: the krew
# manifest's archive URLs are RELEASE_URL/ARCHIVE.
RELEASE_URL ?= https://github.com/nodecreds/nodecreds/releases/download/v$(VERSION)

.PHONY: release
release: ## Push REPO:VERSION and write _output/release (manifest by digest, chart, binaries, kubectl plugin archives and krew manifest plugins/nodecreds.yaml for RELEASE_URL, CHANGELOG.md, SHA256SUMS): make release VERSION=x.y.z IMAGE=host[:port]/repo
	@[ "$(origin VERSION)" = "command line" ] && [ -n "$(IMAGE)" ] || { echo "usage: make release VERSION=x.y.z IMAGE=host[:port]/repo"; exit 2; }
	$(MAKE) --no-print-directory image chart-tool VERSION=$(VERSION)
	@set -euo pipefail; \
	ref=$$($(GO) run ./scripts/image push -layout _output/image $(IMAGE):$(VERSION)); digest=$${ref##*@}; \
	rm -rf _output/release && mkdir -p _output/release; \
	$(CHART) manifest -set image.repository=$(IMAGE),image.tag=$(VERSION),image.digest=$$digest > _output/release/nodecreds.yaml; \
	$(CHART) package -version $(VERSION) -repository $(IMAGE) -digest $$digest -out _output/release >/dev/null; \
	$(GO) run ./scripts/image binaries -version $(VERSION) -out _output/release; \
	$(GO) run ./scripts/krew -version $(VERSION) -url $(RELEASE_URL) -dir _output/release; \
	cp CHANGELOG.md _output/release/; \
	files="nodecreds.yaml nodecreds-$(VERSION).tgz nodecreds-linux-amd64 nodecreds-linux-arm64 nodecreds-$(VERSION)-linux-amd64.tar.gz nodecreds-$(VERSION)-linux-arm64.tar.gz plugins/nodecreds.yaml CHANGELOG.md"; \
	(cd _output/release && sha256sum $$files > SHA256SUMS); \
	echo "released $$ref"; echo "  _output/release: $$files SHA256SUMS"

.PHONY: docker-image
docker-image: ## The same image with a Docker engine (Dockerfile), tagged IMAGE
	docker build --build-arg VERSION=$(VERSION) -t $(or $(IMAGE),nodecreds:$(VERSION)) .

.PHONY: clean
clean: ## Remove built binaries
	rm -rf bin
