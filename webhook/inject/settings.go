package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podidentity/podidentity/internal/contract"
)

// Settings are the values injected into every pod. The webhook's flags fill them (package config).
type Settings struct {
	InitImage       string
	SidecarImage    string
	ImagePullPolicy corev1.PullPolicy
	// ImagePullSecrets are names of Secrets, in the pod's namespace, that the webhook appends to the
	// spec.imagePullSecrets of every pod it injects, so that our images can come from a private registry
	// without every app adding the secret itself. The kubelet pulls every image of a pod with all of the pod's
	// pull secrets, so they serve the app's images too; the user's own are kept.
	ImagePullSecrets []string

	// SidecarPort is the sidecar's loopback token port, HealthPort its probe and metrics port.
	SidecarPort int32
	HealthPort  int32
	// SidecarUID is the uid the sidecar serves as. With ExemptionUID it is also the one uid the redirect
	// exempts, so no other container of the pod may run as it or be able to change to it.
	SidecarUID int64
	// Exemption is how the sidecar's own traffic passes the redirect (see init/README.md).
	Exemption Exemption
	// RedirectMode is who installs the redirect: the NET_ADMIN init container, or the node's CNI plugin.
	RedirectMode RedirectMode

	IMDSAddress string
	IMDSPort    int32

	// Native injects the sidecar as a native sidecar (an init container with restartPolicy Always, Kubernetes
	// 1.29+); otherwise it is appended to the app containers (classic).
	Native bool

	SidecarResources corev1.ResourceRequirements
	InitResources    corev1.ResourceRequirements

	// Passed through to the sidecar's flags.
	BlockInstanceMetadata  bool
	MetadataHeaderRequired bool
	// SidecarLogVerbosity is the sidecar's --v (1 also logs refused token requests); 0, the sidecar's own
	// default, adds no flag, so pods injected before the setting existed still compare equal.
	SidecarLogVerbosity int
	// SidecarAADAuthorityHost and SidecarAADDisableInstanceDiscovery are the sidecar's --aad-authority-host
	// and --aad-disable-instance-discovery: the Azure AD of service principals and federated identities that set
	// no adEndpoint (sovereign clouds, Azure Stack). Empty and false add no flag.
	SidecarAADAuthorityHost            string
	SidecarAADDisableInstanceDiscovery bool
	// SidecarCABundleConfigMap names a ConfigMap (in the pod's namespace) whose key ca.crt the sidecar trusts
	// instead of the system's roots for its TLS connections (Azure AD behind a private CA: Azure Stack, an
	// emulator): volume podidentity-ca, mounted into the sidecar only, and SSL_CERT_FILE. Empty: none.
	SidecarCABundleConfigMap string

	// ForceNamespaced restricts every binding to the pod's own namespace (binding.Options).
	ForceNamespaced bool

	// UIDChangePolicy is what to do with a user container able to change its uid to SidecarUID.
	UIDChangePolicy UIDChangePolicy

	// Placement (guard mode) pins pods that ask for identities to the identity pool; nil: off.
	Placement *Placement
}

// DefaultSettings are the values of the contract in internal/contract, with small resource budgets.
func DefaultSettings() Settings {
	return Settings{
		InitImage:              "ghcr.io/podidentity/podidentity-init:latest",
		SidecarImage:           "ghcr.io/podidentity/podidentity-sidecar:latest",
		ImagePullPolicy:        corev1.PullIfNotPresent,
		SidecarPort:            contract.SidecarPort,
		HealthPort:             contract.SidecarHealthPort,
		SidecarUID:             contract.SidecarUID,
		IMDSAddress:            contract.IMDSAddress,
		IMDSPort:               contract.IMDSPort,
		Native:                 true,
		SidecarResources:       Resources("10m", "16Mi", "200m", "64Mi"),
		InitResources:          Resources("10m", "16Mi", "100m", "32Mi"),
		MetadataHeaderRequired: true,
		Exemption:              ExemptionCgroup,
		RedirectMode:           RedirectInit,
		UIDChangePolicy:        UIDChangeDeny,
	}
}

// Exemption is how the redirect lets the sidecar's own traffic through to the node's IMDS.
type Exemption string

const (
	// ExemptionCgroup: the init container exempts nobody; the sidecar starts as root with NET_ADMIN, SETUID
	// and SETGID only, exempts its own container's cgroup and drops to SidecarUID with no capabilities
	// before it serves. No other container can join that cgroup, whatever its uid (the default).
	ExemptionCgroup Exemption = "cgroup"
	// ExemptionUID: the init container exempts SidecarUID; the sidecar runs as it from the start. Any
	// container able to become that uid bypasses the redirect, so UIDChangePolicy applies. Only for nodes
	// whose kernel cannot match cgroups (Linux < 5.13, cgroup v1 only).
	ExemptionUID Exemption = "uid"
)

// RedirectMode is who installs the redirect in a pod's network namespace.
type RedirectMode string

const (
	// RedirectInit: the injected init container, as root with NET_ADMIN (opted-in namespaces need the Pod
	// Security level privileged); the sidecar exempts its own cgroup at start (the default).
	RedirectInit RedirectMode = "init"
	// RedirectCNI: the podidentity CNI plugin, chained after the node's primary CNI, at sandbox creation; it
	// also fences every other pod of the node off the IMDS address. The injected init container only checks,
	// unprivileged, that the redirect is there; the sidecar runs non-root with no capabilities and the node
	// agent exempts its cgroup. Injected pods pass the Pod Security level restricted. Only pods that ask for
	// identities (label aadpodidbinding) get a sidecar: the others need only the fence.
	RedirectCNI RedirectMode = "cni"
)

// ParseRedirectMode reads a --redirect-mode value.
func ParseRedirectMode(v string) (RedirectMode, error) {
	switch m := RedirectMode(v); m {
	case RedirectInit, RedirectCNI:
		return m, nil
	}
	return "", fmt.Errorf("%q: use init or cni", v)
}

// ParseExemption reads a --sidecar-exemption value.
func ParseExemption(v string) (Exemption, error) {
	switch e := Exemption(v); e {
	case ExemptionCgroup, ExemptionUID:
		return e, nil
	}
	return "", fmt.Errorf("%q: use cgroup or uid", v)
}

// Resources builds requests and limits from quantities; it panics on a malformed quantity, so callers with
// user input parse first (config does).
func Resources(cpuRequest, memRequest, cpuLimit, memLimit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(cpuRequest),
			corev1.ResourceMemory: resource.MustParse(memRequest),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(cpuLimit),
			corev1.ResourceMemory: resource.MustParse(memLimit),
		},
	}
}
