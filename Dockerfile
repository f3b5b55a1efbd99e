# One multi-stage build, one target per binary:
#   docker buildx build --target sidecar --platform linux/amd64,linux/arm64 -t <registry>/podidentity-sidecar:<tag> .
# Targets: webhook, sidecar, assigner, init, node. Binaries are static (CGO_ENABLED=0) and cross-compiled by the Go
# toolchain for TARGETOS/TARGETARCH, so multi-arch needs no emulation. Without a Docker engine, `make images`
# assembles the same images as tarballs (hack/tools/imagebuild).
ARG GO_VERSION=1.26
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X github.com/podidentity/podidentity/internal/version.Version=${VERSION}" \
      -o /out/ ./webhook/cmd/... ./sidecar/cmd/... ./assigner/cmd/... ./init/cmd/... ./cni/cmd/...

FROM gcr.io/distroless/static-debian12:nonroot AS webhook
COPY --from=build /out/podidentity-webhook /podidentity-webhook
USER 65532:65532
ENTRYPOINT ["/podidentity-webhook"]

FROM gcr.io/distroless/static-debian12:nonroot AS assigner
COPY --from=build /out/podidentity-assigner /podidentity-assigner
USER 65532:65532
ENTRYPOINT ["/podidentity-assigner"]

# The sidecar's uid is the one uid the init container exempts from the redirect (internal/contract.SidecarUID).
FROM gcr.io/distroless/static-debian12:nonroot AS sidecar
COPY --from=build /out/podidentity-sidecar /podidentity-sidecar
USER 15078:15078
ENTRYPOINT ["/podidentity-sidecar"]

# The init container programs nftables in the pod's network namespace: root with NET_ADMIN only (the webhook
# drops every other capability).
FROM gcr.io/distroless/static-debian12 AS init
COPY --from=build /out/podidentity-init /podidentity-init
USER 0:0
ENTRYPOINT ["/podidentity-init"]

# CNI mode's node agent (a privileged DaemonSet): it copies the CNI plugin beside it onto the node.
FROM gcr.io/distroless/static-debian12 AS node
COPY --from=build /out/podidentity-node /podidentity-node
COPY --from=build /out/podidentity-cni /podidentity-cni
USER 0:0
ENTRYPOINT ["/podidentity-node"]
