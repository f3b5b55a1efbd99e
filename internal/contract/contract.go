// Package contract is what the four components (webhook, init container, sidecar, assigner) agree on: the
// IMDS address and the sidecar's ports and uid, the names of the injected containers and volumes, the project's
// label and annotation keys, and (identities.go) the format of the identities annotation. The webhook injects
// these values, the init container and the sidecar default to them: changing one here changes all of them
// together. It imports nothing from Kubernetes, so the sidecar stays small.
package contract

const (
	// IMDSAddress and IMDSPort are where apps (and their SDKs) reach the instance metadata service.
	IMDSAddress = "169.254.169.254"
	IMDSPort    = 80

	// SidecarPort is the token sidecar's IMDS port, bound to 127.0.0.1 inside the pod only. The init container
	// redirects IMDSAddress:IMDSPort there.
	SidecarPort = 15079
	// SidecarHealthPort serves /healthz, /readyz and /metrics on all of the pod's addresses, for the kubelet's
	// probes and for Prometheus; it never serves tokens.
	SidecarHealthPort = 15080
	// SidecarUID is the uid the sidecar runs as. Its traffic is the only traffic exempt from the redirect, so
	// no other container of the pod may run as this uid (the webhook refuses such pods).
	SidecarUID = 15078

	// InitContainerName and SidecarContainerName are the names of the injected containers.
	InitContainerName    = "podidentity-init"
	SidecarContainerName = "podidentity-sidecar"

	// IdentitiesVolumeName is the downward API volume that carries the identities annotation to the sidecar,
	// mounted at IdentitiesDir; the file is IdentitiesDir/IdentitiesFile.
	IdentitiesVolumeName = "podidentity-identities"
	// SecretVolumePrefix starts the name of each service principal's secret volume:
	// podidentity-sp-<AzureIdentity name>. The webhook adds one per service principal it serves; the sidecar
	// can serve no other.
	SecretVolumePrefix = "podidentity-sp-"
	IdentitiesDir      = "/var/run/podidentity"
	IdentitiesFile     = "identities"
	// SecretsDir holds one directory per service-principal identity (SecretsDir/<identity name>/), mounted into
	// the sidecar container only.
	SecretsDir = "/var/run/podidentity/secrets"

	// FederatedTokenVolumeName is the projected service account token volume the webhook adds to a pod bound
	// to a federated identity, mounted into the sidecar container only at FederatedTokenDir; the token is the
	// file FederatedTokenDir/FederatedTokenFile, for audience FederatedAudience, valid
	// FederatedTokenExpirationSeconds and rotated by the kubelet (at 80% of that).
	FederatedTokenVolumeName        = "podidentity-token"
	FederatedTokenDir               = "/var/run/podidentity/federated"
	FederatedTokenFile              = "token"
	FederatedAudience               = "api://AzureADTokenExchange"
	FederatedTokenExpirationSeconds = 3600

	// CABundleVolumeName is the ConfigMap volume of the CA bundle the sidecar trusts when the webhook is given
	// one (--sidecar-ca-bundle-configmap), mounted at CABundleDir in the sidecar only; the file is
	// CABundleDir/CABundleKey, named by the sidecar's SSL_CERT_FILE.
	CABundleVolumeName = "podidentity-ca"
	CABundleDir        = "/var/run/podidentity/ca"
	CABundleKey        = "ca.crt"
)

// Labels and annotations of the project (AAD Pod Identity's own are in api/v1).
const (
	// NamespaceInjectionLabel opts a namespace in when its value is "enabled".
	NamespaceInjectionLabel = "podidentity.io/injection"
	// InjectAnnotation with the value "false" opts a single pod out.
	InjectAnnotation = "podidentity.io/inject"
	// IdentitiesAnnotation records the identities a pod is bound to; identities.go defines its value (the
	// format) and package binding decides what goes in it.
	IdentitiesAnnotation = "podidentity.io/identities"
	// SecurityWarningsAnnotation lists, comma-separated, the reasons the webhook admitted a pod of an opted-in
	// namespace in a state that weakens its isolation (e.g. "opt-out-annotation", "exception",
	// "host-network", "windows", "uid-change"). Only the webhook sets it; the assigner turns it into Warning
	// Events on the pod and reports such pods in its audit.
	SecurityWarningsAnnotation = "podidentity.io/security-warnings"
)
