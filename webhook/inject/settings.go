package inject

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podidentity/podidentity/internal/defaults"
)

// Settings are the values injected into every pod. The webhook's flags fill them (package config).
type Settings struct {
	InitImage       string
	SidecarImage    string
	ImagePullPolicy corev1.PullPolicy

	// SidecarPort is the sidecar's loopback token port, HealthPort its probe and metrics port.
	SidecarPort int32
	HealthPort  int32
	// SidecarUID is the sidecar's uid: the init container exempts exactly this uid from the redirect, so no
	// other container of the pod may run as it.
	SidecarUID int64

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

	// ForceNamespaced restricts every binding to the pod's own namespace (binding.Options).
	ForceNamespaced bool

	// UIDChangePolicy is what to do with a user container able to change its uid to SidecarUID.
	UIDChangePolicy UIDChangePolicy

	// Placement (guard mode) pins pods that ask for identities to the identity pool; nil: off.
	Placement *Placement
}

// DefaultSettings are the values of the contract in internal/defaults, with small resource budgets.
func DefaultSettings() Settings {
	return Settings{
		InitImage:              "ghcr.io/podidentity/podidentity-init:latest",
		SidecarImage:           "ghcr.io/podidentity/podidentity-sidecar:latest",
		ImagePullPolicy:        corev1.PullIfNotPresent,
		SidecarPort:            defaults.SidecarPort,
		HealthPort:             defaults.SidecarHealthPort,
		SidecarUID:             defaults.SidecarUID,
		IMDSAddress:            defaults.IMDSAddress,
		IMDSPort:               defaults.IMDSPort,
		Native:                 true,
		SidecarResources:       Resources("10m", "32Mi", "200m", "64Mi"),
		InitResources:          Resources("10m", "16Mi", "100m", "32Mi"),
		MetadataHeaderRequired: true,
		UIDChangePolicy:        UIDChangeWarn,
	}
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
