// Package packaging tests the helm chart (charts/podidentity) and the kustomize manifests (manifests/kustomize):
// lint, golden renderings, schema rejections, container args against the binaries' flags, installation into a
// real kube-apiserver with cert-manager's CRDs, and the self-managed certificate mode end to end.
package packaging
