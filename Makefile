# kilo-session-operator

# Image used by docker-build and deploy.
IMG ?= ghcr.io/kilo-org/kilo-session-operator:dev
CONTAINER_TOOL ?= docker
# Kustomization deploy renders: config/default (self-managed webhook certificates) or config/overlays/cert-manager.
DEPLOY_CONFIG ?= config/default
# Every kustomization `make check-manifests` (part of `make test`) renders.
KUSTOMIZATIONS ?= config/default config/overlays/cert-manager config/samples config/network-policy config/prometheus
# make demo KEEP=1 leaves the local control plane, manager, egress and upstream running.
KEEP ?= 0

GO ?= go
LOCALBIN ?= $(CURDIR)/bin
ENVTEST_DIR ?= $(LOCALBIN)/k8s
export KUBEBUILDER_ASSETS ?= $(ENVTEST_DIR)
CONTROLLER_GEN ?= $(GO) tool controller-gen
FUZZTIME ?= 10s
BENCHTIME ?= 1s
TEST_FLAGS ?= -count=1 -timeout 25m

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: ## Generate the CRD, RBAC and webhook manifests from markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd webhook paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: ## Generate DeepCopy implementations.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run gofmt on the tree.
	gofmt -w $$(git ls-files '*.go')

.PHONY: lint
lint: ## gofmt check and go vet.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: verify
verify: manifests generate ## Regenerate everything and fail if the tree changed.
	@if [ -n "$$(git status --porcelain -- api config)" ]; then \
		echo "Generated files are out of date; run 'make manifests generate' and commit:"; \
		git status --porcelain -- api config; git --no-pager diff -- api config | head -50; exit 1; fi

.PHONY: envtest
envtest: ## Build etcd and kube-apiserver for envtest from source into bin/k8s (cached).
	@hack/build-envtest.sh $(ENVTEST_DIR)

.PHONY: test
test: envtest lint verify check-manifests ## Run every test suite (unit, fuzz seeds, interop, envtest, the demo end to end).
	$(GO) test $(TEST_FLAGS) ./...
	$(MAKE) --no-print-directory test-e2e

.PHONY: test-e2e
test-e2e: envtest ## Run `make demo` non-interactively as a test: the main job on a local control plane.
	$(GO) test -tags e2e -count=1 -timeout 15m -v ./test/e2e/

.PHONY: check-manifests
check-manifests: ## Render every kustomization (config/default, overlays, samples) and fail on any error.
	@command -v kubectl >/dev/null || { echo "kubectl is needed to render the kustomizations"; exit 1; }
	@for d in $(KUSTOMIZATIONS); do \
		kubectl kustomize $$d >/dev/null || { echo "kustomize build $$d failed"; exit 1; }; \
		echo "rendered $$d"; done

.PHONY: bench
bench: envtest ## Run the benchmarks; each reports its ratio against a baseline measured in the same run.
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -timeout 30m ./...

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 10s).
	@hack/fuzz.sh $(FUZZTIME)

##@ Demo

.PHONY: demo
demo: envtest ## The main job on a local control plane: issue, inject, redeem, rotate, revoke (KEEP=1 leaves it running).
	@KEEP=$(KEEP) hack/demo/demo.sh

##@ Build

.PHONY: build
build: ## Build the binaries into bin/.
	$(GO) build -o $(LOCALBIN)/ ./cmd/...

.PHONY: docker-build
docker-build: ## Build the image (manager, egress, kubectl-kilo) as IMG with Docker.
	$(CONTAINER_TOOL) build -t $(IMG) .

.PHONY: docker-push
docker-push: ## Push IMG.
	$(CONTAINER_TOOL) push $(IMG)

##@ Deployment

.PHONY: install
install: ## Install the CRD into the cluster of the current kubeconfig.
	kubectl apply --server-side -k config/crd

.PHONY: uninstall
uninstall: ## Remove the CRD (and with it every KiloSession) from the cluster.
	kubectl delete --ignore-not-found -k config/crd

.PHONY: deploy
deploy: ## Deploy CRD, manager, egress and RBAC with image IMG (DEPLOY_CONFIG=config/overlays/cert-manager for cert-manager).
	@hack/render.sh $(DEPLOY_CONFIG) $(IMG) | kubectl apply --server-side -f -

.PHONY: undeploy
undeploy: ## Remove everything deploy created (KiloSessions first, while the manager can still run their finalizers).
	kubectl delete kilosessions.kilo.ai --all --all-namespaces --ignore-not-found --timeout=120s || true
	@hack/render.sh $(DEPLOY_CONFIG) $(IMG) | kubectl delete --ignore-not-found --wait=false -f -
