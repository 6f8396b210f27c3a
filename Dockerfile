# syntax=docker/dockerfile:1
# One image, three static binaries: the manager (controller + webhook), the egress (interceptor + redeem API) and
# kubectl-kilo. The Deployments pick the binary with `command`. Build with `make docker-build IMG=…`.

ARG GO_VERSION=1.26
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS builder
ARG TARGETOS
ARG TARGETARCH
WORKDIR /workspace

# Dependencies first, so source edits do not invalidate the module cache layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download

COPY api/ api/
COPY cmd/ cmd/
COPY internal/ internal/

# CGO off: static binaries that run on distroless/static with no libc. -trimpath and stripped symbols keep build
# paths out of the image and the image small.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/manager ./cmd/egress ./cmd/kubectl-kilo

# distroless/static:nonroot: CA certificates and tzdata, no shell, no package manager; runs as UID 65532.
FROM gcr.io/distroless/static:nonroot
WORKDIR /
COPY --from=builder /out/manager /out/egress /out/kubectl-kilo /
USER 65532:65532
ENTRYPOINT ["/manager"]
