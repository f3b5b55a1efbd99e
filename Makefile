# podidentity: every target a new user needs. `make test` sets up everything it uses on a fresh machine.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

GO        ?= go
BIN       := $(CURDIR)/bin
# Kubernetes release of the test control plane (and, later, of the end-to-end cluster).
K8S_VERSION := v1.37.2
K8S_MINOR   := 37
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# The oldest Kubernetes release the chart claims (Chart.yaml kubeVersion; hack/tools/k8s-oldest pins it): the
# integration suites run against its kube-apiserver too (make test-oldest). test/suites/packaging checks that the three agree.
K8S_OLDEST_VERSION := v1.32.13
K8S_OLDEST_MINOR   := 32
OLDEST_BIN         := $(CURDIR)/bin/k8s-1.$(K8S_OLDEST_MINOR)

# k8s_ldflags stamps a Kubernetes build with its release ($(1): version, $(2): minor), as release builds are.
k8s_ldflags = -s -w \
  -X k8s.io/component-base/version.gitVersion=$(1) \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=$(2) \
  -X k8s.io/component-base/version.gitTreeState=clean \
  -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
  -X k8s.io/client-go/pkg/version.gitVersion=$(1) \
  -X k8s.io/client-go/pkg/version.gitMajor=1 \
  -X k8s.io/client-go/pkg/version.gitMinor=$(2)
K8S_LDFLAGS := $(call k8s_ldflags,$(K8S_VERSION),$(K8S_MINOR))

CONTROLLER_GEN := $(BIN)/controller-gen
ENVTEST_BINS   := $(BIN)/kube-apiserver $(BIN)/etcd
# envtest finds kube-apiserver and etcd here; nothing is downloaded.
export KUBEBUILDER_ASSETS := $(BIN)

LDFLAGS := -s -w -X github.com/podidentity/podidentity/internal/version.Version=$(VERSION)

BINARIES := podidentity-webhook podidentity-sidecar podidentity-assigner podidentity-init podidentity-node podidentity-cni

.PHONY: all
all: build

##@ Build

.PHONY: build
build: ## Compile every package; the component binaries (<component>/cmd/<binary>) land in bin/.
	@mkdir -p $(BIN)
	$(GO) build ./...
	@mains=$$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./... | grep '/cmd/' || true); \
	  if [ -n "$$mains" ]; then CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ $$mains; fi

IMAGE_REGISTRY ?= ghcr.io/podidentity
IMAGE_TAG      ?= $(VERSION)
IMAGEBUILD     := $(BIN)/imagebuild
# imagebuild assembles images with the root module's test/toolbox/ociimage (hack/tools/go.mod replaces the root
# module with ../..), so its sources and the root's go.mod are the tool's sources too.
IMAGEBUILD_SRC := hack/tools/go.mod hack/tools/go.sum go.mod $(shell find hack/tools/imagebuild test/toolbox/ociimage -name '*.go' ! -name '*_test.go')
# binary:uid of each image. The node image also carries the CNI plugin,
# which its agent copies onto the node.
IMAGE_USERS    := podidentity-webhook:65532 podidentity-assigner:65532 podidentity-sidecar:15078 podidentity-init:0 podidentity-node:0
IMAGE_PACKAGES := ./webhook/cmd/podidentity-webhook ./assigner/cmd/podidentity-assigner ./sidecar/cmd/podidentity-sidecar \
                  ./init/cmd/podidentity-init ./cni/cmd/podidentity-node ./cni/cmd/podidentity-cni
IMAGE_EXTRA_podidentity-node := podidentity-cni

HOST_GOARCH    := $(shell $(GO) env GOARCH)
HOST_IMAGE_BIN := $(BIN)/images/linux_$(HOST_GOARCH)

.PHONY: images
images: $(IMAGEBUILD) ## Build the binaries of the five images for this machine (bin/images/linux_<arch>/, what the local cluster pushes to its registry) and the images as tarballs in bin/images/, without a Docker daemon.
	@mkdir -p $(HOST_IMAGE_BIN)
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(HOST_IMAGE_BIN)/ $(IMAGE_PACKAGES)
	@for b in $(IMAGE_USERS); do n=$${b%%:*}; u=$${b##*:}; extra=""; \
	  [ "$$n" = podidentity-node ] && extra="--extra-binary $(HOST_IMAGE_BIN)/$(IMAGE_EXTRA_podidentity-node)"; \
	  $(IMAGEBUILD) --binary $(HOST_IMAGE_BIN)/$$n $$extra --uid $$u --version $(VERSION) \
	    --tag $(IMAGE_REGISTRY)/$$n:$(IMAGE_TAG) --out $(BIN)/images/$$n.tar; \
	  echo "$(IMAGE_REGISTRY)/$$n:$(IMAGE_TAG) -> bin/images/$$n.tar ($$(du -h $(BIN)/images/$$n.tar | cut -f1))"; done

$(IMAGEBUILD): $(IMAGEBUILD_SRC)
	@mkdir -p $(BIN)
	cd hack/tools && $(GO) build -trimpath -o $@ ./imagebuild

.PHONY: imagebuild
imagebuild: $(IMAGEBUILD) ## Build bin/imagebuild (images, push, verify, signing keys).

.PHONY: helm
helm: $(BIN)/helm ## Build bin/helm from its Go module (once).

# Publishing: the images as OCI image indexes (linux/amd64 + linux/arm64), signed, with SBOMs, and the chart as
# an OCI artifact, to a registry you name and are logged in to (docs/install.md, "From your own registry").
CHART_DIR      := charts/podidentity
APP_VERSION    := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' $(CHART_DIR)/Chart.yaml)
CHART_VERSION  := $(shell sed -n 's/^version: *"*\([^"]*\)"*$$/\1/p' $(CHART_DIR)/Chart.yaml)
IMAGE_ARCHS    ?= amd64 arm64
# name:uid[:extra binaries] of each published image (the same as IMAGE_USERS).
IMAGE_SPECS    := podidentity-webhook:65532 podidentity-assigner:65532 podidentity-sidecar:15078 podidentity-init:0 podidentity-node:0:podidentity-cni
# The signing key (cosign-compatible ECDSA P-256 PEM; its password, if any, in COSIGN_PASSWORD). Made on first
# use when missing; publish $(SIGNING_KEY).pub so users can verify.
SIGNING_KEY    ?= $(BIN)/signing/cosign.key
REGISTRY       ?=
# REGISTRY without a trailing slash; the chart goes to oci://$(REGISTRY)/charts/podidentity.
CHART_REPO      = oci://$(patsubst %/,%,$(REGISTRY))/charts

.PHONY: require-registry
require-registry:
	@test -n "$(REGISTRY)" || { echo "REGISTRY is required: make $(MAKECMDGOALS) REGISTRY=<host>[/path], e.g. REGISTRY=myregistry.azurecr.io/podidentity (log in first: docs/install.md)"; exit 1; }

$(SIGNING_KEY): | $(IMAGEBUILD)
	$(IMAGEBUILD) keygen --key $@

.PHONY: images-push
images-push: require-registry $(IMAGEBUILD) $(SIGNING_KEY) ## Build the five images for linux/amd64 and linux/arm64, push them to REGISTRY as OCI indexes tagged with the chart's appVersion, signed, each with a signed SBOM; then verify.
	@for arch in $(IMAGE_ARCHS); do echo "building the binaries for linux/$$arch"; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/images/linux_$$arch/ $(IMAGE_PACKAGES); done
	$(IMAGEBUILD) push --registry $(REGISTRY) --chart $(CHART_DIR) --bin-dir $(BIN)/images --key $(SIGNING_KEY) --arch "$(IMAGE_ARCHS)" --image "$(IMAGE_SPECS)"
	$(MAKE) --no-print-directory images-verify REGISTRY=$(REGISTRY)

.PHONY: images-verify
images-verify: require-registry $(IMAGEBUILD) ## Check every image in REGISTRY: both architectures, signatures (against $(SIGNING_KEY).pub) and SBOMs.
	$(IMAGEBUILD) verify --registry $(REGISTRY) --chart $(CHART_DIR) --key $(SIGNING_KEY).pub --arch "$(IMAGE_ARCHS)" --image "$(IMAGE_SPECS)"

.PHONY: chart-push
chart-push: require-registry $(BIN)/helm $(IMAGEBUILD) $(SIGNING_KEY) ## Package the chart, push it to oci://REGISTRY/charts/podidentity (log in with `bin/helm registry login` first) and sign it like the images.
	@mkdir -p $(BIN)/charts
	$(BIN)/helm package $(CHART_DIR) --destination $(BIN)/charts
	$(BIN)/helm push $(BIN)/charts/podidentity-$(CHART_VERSION).tgz $(CHART_REPO)
	$(IMAGEBUILD) sign --key $(SIGNING_KEY) --ref $(patsubst oci://%,%,$(CHART_REPO))/podidentity:$(CHART_VERSION)
	$(MAKE) --no-print-directory chart-verify REGISTRY=$(REGISTRY)

.PHONY: chart-verify
chart-verify: require-registry $(IMAGEBUILD) ## Check the chart in REGISTRY is signed by $(SIGNING_KEY).pub.
	$(IMAGEBUILD) verify-signature --key $(SIGNING_KEY).pub --ref $(patsubst oci://%,%,$(CHART_REPO))/podidentity:$(CHART_VERSION)

.PHONY: release
release: images-push chart-push ## Publish images and chart to REGISTRY (what .github/workflows/release.yaml runs on a tag).
	@echo "install with: helm install podidentity $(CHART_REPO)/podidentity --version $(CHART_VERSION) -n podidentity-system --create-namespace --set image.registry=$(patsubst %/,%,$(REGISTRY))"

##@ Test

.PHONY: test
test: lint verify-generate envtest-bins envtest-oldest packaging-tools cluster-bins images ## Run every check and test: unit, golden, integration against a real kube-apiserver and etcd (the newest and the oldest supported Kubernetes), and end to end on a local cluster (root).
	$(GO) test -count=1 -timeout 30m ./...
	@$(MAKE) --no-print-directory test-oldest
	cd hack/tools && $(GO) test -count=1 ./imagebuild/...

# The packages whose tests start a control plane (test/toolbox/testenv's Start, or StartIssuer): the integration suites.
ENVTEST_CALL := testenv.Start
ENVTEST_PKGS = $(shell git grep -lF '$(ENVTEST_CALL)' -- '*_test.go' | xargs -n1 dirname | sort -u | sed 's|^|./|')

.PHONY: test-oldest
test-oldest: envtest-oldest packaging-tools ## The integration suites (every package that starts a control plane) against the oldest supported Kubernetes (part of `make test`).
	@echo "integration suites against kube-apiserver $(K8S_OLDEST_VERSION), the oldest Kubernetes the chart claims"
	KUBEBUILDER_ASSETS=$(OLDEST_BIN) PODIDENTITY_TEST_KUBE_VERSION=$(K8S_OLDEST_VERSION) \
	  $(GO) test -count=1 -timeout 30m $(ENVTEST_PKGS)

.PHONY: test-short
test-short: ## Unit tests only (no control plane).
	$(GO) test -short ./...

.PHONY: packaging-tools
packaging-tools: $(BIN)/helm $(BIN)/kustomize $(BIN)/promtool ## Build helm, kustomize and promtool from Go modules into bin/ (once), for the chart and monitoring tests.

.PHONY: envtest-bins
envtest-bins: $(ENVTEST_BINS) ## Build kube-apiserver and etcd from Go modules into bin/ (once).

.PHONY: envtest-oldest
envtest-oldest: $(OLDEST_BIN)/kube-apiserver $(OLDEST_BIN)/etcd ## Build the oldest supported Kubernetes release's kube-apiserver into bin/k8s-1.NN/ (once), beside the shared etcd.

$(OLDEST_BIN)/kube-apiserver: hack/tools/k8s-oldest/go.mod
	@mkdir -p $(OLDEST_BIN)
	@echo "building kube-apiserver $(K8S_OLDEST_VERSION) from Go modules (about 4 min cold on 2 idle cores, once)"
	cd hack/tools/k8s-oldest && $(GO) build -trimpath -ldflags "$(call k8s_ldflags,$(K8S_OLDEST_VERSION),$(K8S_OLDEST_MINOR))" -o $@ k8s.io/kubernetes/cmd/kube-apiserver

# The same etcd as the newest release's: the API server's etcd client of 1.32 speaks to etcd 3.6's v3 API.
$(OLDEST_BIN)/etcd: | $(BIN)/etcd
	@mkdir -p $(OLDEST_BIN)
	ln -sf ../etcd $@

$(BIN)/kube-apiserver: hack/tools/k8s/go.mod
	@mkdir -p $(BIN)
	@echo "building kube-apiserver $(K8S_VERSION) from Go modules (about 6 min cold on 2 cores, once)"
	cd hack/tools/k8s && $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/kube-apiserver

# The node and the rest of the control plane of the end-to-end cluster (test/cluster), built like kube-apiserver.
CLUSTER_BINS := $(BIN)/kube-controller-manager $(BIN)/kube-scheduler $(BIN)/kube-proxy $(BIN)/kubelet

.PHONY: cluster-bins
cluster-bins: $(ENVTEST_BINS) $(CLUSTER_BINS) ## Build the end-to-end cluster's Kubernetes binaries from Go modules into bin/ (once).

$(CLUSTER_BINS): hack/tools/k8s/go.mod
	@mkdir -p $(BIN)
	@echo "building $(notdir $@) $(K8S_VERSION) from Go modules (once)"
	cd hack/tools/k8s && $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/$(notdir $@)

$(BIN)/etcd: hack/tools/etcd/go.mod
	@mkdir -p $(BIN)
	@echo "building etcd from Go modules (about 1 min cold, once)"
	cd hack/tools/etcd && $(GO) build -trimpath -ldflags "-s -w" -o $@ go.etcd.io/etcd/server/v3

$(BIN)/helm: hack/tools/helm/go.mod
	@mkdir -p $(BIN)
	cd hack/tools/helm && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ helm.sh/helm/v3/cmd/helm

$(BIN)/promtool: hack/tools/promtool/go.mod
	@mkdir -p $(BIN)
	cd hack/tools/promtool && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ github.com/prometheus/prometheus/cmd/promtool

$(BIN)/kustomize: hack/tools/kustomize/go.mod
	@mkdir -p $(BIN)
	cd hack/tools/kustomize && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ sigs.k8s.io/kustomize/kustomize/v5

$(CONTROLLER_GEN): hack/tools/go.mod
	@mkdir -p $(BIN)
	cd hack/tools && $(GO) build -trimpath -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

##@ Demo and local cluster

.PHONY: demo
demo: cluster-bins packaging-tools images ## From nothing to a token: local cluster + emulated Azure, the chart, an Azure SDK client's token (root; KEEP=1 keeps the cluster; MODE=cni for CNI mode; BACKEND=federated for a federated identity).
	$(GO) run ./test/demo $(if $(KEEP),--keep) $(if $(MODE),--mode=$(MODE)) $(if $(BACKEND),--backend=$(BACKEND))

.PHONY: e2e
e2e: cluster-bins packaging-tools images ## Only the end-to-end suite on a local cluster (root; part of `make test`).
	$(GO) test -count=1 -timeout 30m -v ./test/suites/e2e/

.PHONY: cluster-up
cluster-up: cluster-bins $(IMAGEBUILD) ## Start the local cluster with its emulated Azure and leave it running (root).
	$(GO) run ./test/cluster/cmd/cluster up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and undo its host changes.
	$(GO) run ./test/cluster/cmd/cluster down

##@ Generate and check

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code and CRDs (manifests/crds/) from api/.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	$(CONTROLLER_GEN) crd:crdVersions=v1 paths=./api/... output:crd:artifacts:config=manifests/crds

.PHONY: verify-generate
verify-generate: $(CONTROLLER_GEN) ## Fail when generated files (deepcopy, CRDs) are stale; regenerates them.
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	  mkdir -p $$tmp/crds; cp -r manifests/crds/. $$tmp/crds/ 2>/dev/null || true; \
	  for f in $$(find api -name 'zz_generated.*.go'); do mkdir -p $$tmp/$$(dirname $$f); cp $$f $$tmp/$$f; done; \
	  $(MAKE) --no-print-directory -s generate >/dev/null; \
	  stale=0; diff -r $$tmp/crds manifests/crds >/dev/null || stale=1; \
	  for f in $$(find api -name 'zz_generated.*.go'); do cmp -s $$f $$tmp/$$f || stale=1; done; \
	  if [ $$stale = 1 ]; then echo "generated files were stale (api/ changed without 'make generate'): they are regenerated now; review and commit them"; exit 1; fi

ACTIONLINT := $(BIN)/actionlint
GOLANGCI_LINT := $(BIN)/golangci-lint

$(ACTIONLINT): hack/tools/actionlint/go.mod
	@mkdir -p $(BIN)
	cd hack/tools/actionlint && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ github.com/rhysd/actionlint/cmd/actionlint

# golangci-lint from its own module (hack/tools/golangci-lint): about 3 minutes cold on 2 cores, once.
$(GOLANGCI_LINT): hack/tools/golangci-lint/go.mod
	@mkdir -p $(BIN)
	cd hack/tools/golangci-lint && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint

.PHONY: lint
lint: $(ACTIONLINT) $(GOLANGCI_LINT) ## gofmt, go vet, golangci-lint (.golangci.yml), and actionlint on .github/workflows.
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt needed on:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...
	$(ACTIONLINT) -shellcheck= -pyflakes= .github/workflows/*.yaml

.PHONY: clean
clean: ## Remove build outputs (bin/ keeps the control plane unless you delete it).
	rm -f $(addprefix $(BIN)/,$(BINARIES))

.PHONY: help
help: ## List targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
