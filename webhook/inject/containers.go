package inject

import (
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podidentity/podidentity/internal/contract"
)

// SecretVolumePrefix starts the name of each service-principal secret volume: podidentity-sp-<identity>.
const SecretVolumePrefix = contract.SecretVolumePrefix

// healthPortName names the sidecar's health port (at most 15 characters).
const healthPortName = "podid-health"

// InitContainer is the redirect init container: it programs nftables in the pod's network namespace, so it
// needs root and NET_ADMIN, and nothing else. In CNI mode it only checks, without any privilege, that the
// node's plugin put the redirect there.
func InitContainer(s Settings) corev1.Container {
	if s.RedirectMode == RedirectCNI {
		return verifierContainer(s)
	}
	args := []string{
		"--sidecar-port=" + strconv.Itoa(int(s.SidecarPort)),
		"--imds-address=" + s.IMDSAddress,
		"--imds-port=" + strconv.Itoa(int(s.IMDSPort)),
		"--exemption=" + string(s.Exemption),
	}
	if s.Exemption == ExemptionUID {
		args = append(args, "--sidecar-uid="+strconv.FormatInt(s.SidecarUID, 10))
	}
	return corev1.Container{
		Name:            contract.InitContainerName,
		Image:           s.InitImage,
		ImagePullPolicy: s.ImagePullPolicy,
		Args:            args,
		Resources:       *s.InitResources.DeepCopy(),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			Privileged:               ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN"},
				Drop: []corev1.Capability{"ALL"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// verifierContainer is CNI mode's init container: the pod starts only if its traffic to the IMDS address
// arrives at the sidecar's port, whatever happened on the node. It passes the Pod Security level restricted.
func verifierContainer(s Settings) corev1.Container {
	return corev1.Container{
		Name:            contract.InitContainerName,
		Image:           s.InitImage,
		ImagePullPolicy: s.ImagePullPolicy,
		Args: []string{
			"--verify-traffic",
			"--sidecar-port=" + strconv.Itoa(int(s.SidecarPort)),
			"--imds-address=" + s.IMDSAddress,
			"--imds-port=" + strconv.Itoa(int(s.IMDSPort)),
		},
		Resources: *s.InitResources.DeepCopy(),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(VerifierUID)),
			RunAsGroup:               ptr(int64(VerifierUID)),
			RunAsNonRoot:             ptr(true),
			Privileged:               ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// VerifierUID is the uid of CNI mode's init container: distroless's nonroot, not the sidecar's.
const VerifierUID = 65532

// SidecarContainer is the token sidecar, mounting the identities file, the secrets of the served service
// principals (secretVolumes: identity name -> volume name) and, when the pod is bound to a federated identity,
// the projected service account token (at contract.FederatedTokenDir, the sidecar's default
// --federated-token-file; so the arguments are the same either way). No other container mounts either.
func SidecarContainer(s Settings, secretVolumes []SecretVolume, federated bool) corev1.Container {
	mounts := []corev1.VolumeMount{{Name: contract.IdentitiesVolumeName, MountPath: contract.IdentitiesDir, ReadOnly: true}}
	for _, v := range secretVolumes {
		mounts = append(mounts, corev1.VolumeMount{Name: v.Volume, MountPath: contract.SecretsDir + "/" + v.Identity, ReadOnly: true})
	}
	if federated {
		mounts = append(mounts, corev1.VolumeMount{Name: contract.FederatedTokenVolumeName, MountPath: contract.FederatedTokenDir, ReadOnly: true})
	}
	if s.SidecarCABundleConfigMap != "" {
		mounts = append(mounts, corev1.VolumeMount{Name: contract.CABundleVolumeName, MountPath: contract.CABundleDir, ReadOnly: true})
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(s.HealthPort), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds: period, FailureThreshold: failures, TimeoutSeconds: 1,
		}
	}
	c := corev1.Container{
		Name:            contract.SidecarContainerName,
		Image:           s.SidecarImage,
		ImagePullPolicy: s.ImagePullPolicy,
		Args: []string{
			fmt.Sprintf("--listen-address=127.0.0.1:%d", s.SidecarPort),
			fmt.Sprintf("--health-address=:%d", s.HealthPort),
			"--identities-file=" + contract.IdentitiesDir + "/" + contract.IdentitiesFile,
			"--secrets-dir=" + contract.SecretsDir,
			fmt.Sprintf("--imds-endpoint=http://%s", hostPort(s.IMDSAddress, s.IMDSPort)),
			"--metadata-header-required=" + strconv.FormatBool(s.MetadataHeaderRequired),
			"--block-instance-metadata=" + strconv.FormatBool(s.BlockInstanceMetadata),
		},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		},
		Ports:        []corev1.ContainerPort{{Name: healthPortName, ContainerPort: s.HealthPort, Protocol: corev1.ProtocolTCP}},
		Resources:    *s.SidecarResources.DeepCopy(),
		VolumeMounts: mounts,
		// The startup probe holds back every later container until the sidecar serves tokens.
		StartupProbe:             probe("/readyz", 1, 60),
		LivenessProbe:            probe("/healthz", 10, 3),
		SecurityContext:          sidecarSecurity(s),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if s.SidecarLogVerbosity > 0 {
		c.Args = append(c.Args, "--v="+strconv.Itoa(s.SidecarLogVerbosity))
	}
	if s.SidecarAADAuthorityHost != "" {
		c.Args = append(c.Args, "--aad-authority-host="+s.SidecarAADAuthorityHost)
	}
	if s.SidecarAADDisableInstanceDiscovery {
		c.Args = append(c.Args, "--aad-disable-instance-discovery")
	}
	if s.SidecarCABundleConfigMap != "" {
		c.Env = append(c.Env, corev1.EnvVar{Name: "SSL_CERT_FILE", Value: contract.CABundleDir + "/" + contract.CABundleKey})
	}
	if s.Exemption == ExemptionCgroup && s.RedirectMode != RedirectCNI {
		// It exempts its own cgroup at start, as root, then serves as SidecarUID with no capability left.
		c.Args = append(c.Args, "--install-exemption",
			"--run-as-uid="+strconv.FormatInt(s.SidecarUID, 10), "--run-as-gid="+strconv.FormatInt(s.SidecarUID, 10))
	}
	if s.Native {
		c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
	}
	return c
}

// sidecarSecurity is the sidecar's security context. With the cgroup exemption it starts as root with the
// three capabilities its start needs (NET_ADMIN to replace the pod's table, SETUID and SETGID to drop to
// SidecarUID); allowPrivilegeEscalation false sets no_new_privs, which does not stop a root process from
// giving up its uid but stops anything it executes from gaining privileges.
func sidecarSecurity(s Settings) *corev1.SecurityContext {
	sc := &corev1.SecurityContext{
		RunAsUser:                ptr(s.SidecarUID),
		RunAsGroup:               ptr(s.SidecarUID),
		RunAsNonRoot:             ptr(true),
		Privileged:               ptr(false),
		AllowPrivilegeEscalation: ptr(false),
		ReadOnlyRootFilesystem:   ptr(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	if s.Exemption == ExemptionCgroup && s.RedirectMode != RedirectCNI {
		// In CNI mode the node agent exempts the sidecar's cgroup: it runs unprivileged from the start.
		sc.RunAsUser, sc.RunAsGroup, sc.RunAsNonRoot = ptr(int64(0)), ptr(int64(0)), ptr(false)
		sc.Capabilities.Add = []corev1.Capability{"NET_ADMIN", "SETUID", "SETGID"}
	}
	return sc
}

// SecretVolume is the volume that carries one service principal's secret.
type SecretVolume struct {
	Identity string // AzureIdentity name: the directory under SecretsDir
	Volume   string // podidentity-sp-<identity>
	Secret   string // Secret name in the pod's namespace
}

// Volumes are the pod volumes the sidecar mounts: the identities file, one per service principal's Secret,
// and with federated the projected service account token for Azure AD's token exchange.
func Volumes(secretVolumes []SecretVolume, federated bool) []corev1.Volume {
	vols := []corev1.Volume{{
		Name: contract.IdentitiesVolumeName,
		VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
			Items: []corev1.DownwardAPIVolumeFile{{
				Path:     contract.IdentitiesFile,
				FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['" + contract.IdentitiesAnnotation + "']"},
			}},
		}},
	}}
	for _, v := range secretVolumes {
		vols = append(vols, corev1.Volume{
			Name:         v.Volume,
			VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: v.Secret}},
		})
	}
	if federated {
		vols = append(vols, FederatedTokenVolume())
	}
	return vols
}

// FederatedTokenVolume is the pod's service account token for audience api://AzureADTokenExchange, valid one
// hour and rotated by the kubelet (at 80% of its life), mounted into the sidecar only. The mode is explicit:
// without it, the kubelet makes the file 0600 and owned by the pod's uid when every container runs as the same
// uid (e.g. root), and the sidecar, which drops to its own uid, could not read it. The file is readable in
// the sidecar's mount namespace only: no other container mounts the volume (the webhook refuses any that does).
func FederatedTokenVolume() corev1.Volume {
	return corev1.Volume{
		Name: contract.FederatedTokenVolumeName,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			DefaultMode: ptr(int32(0o444)),
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience:          contract.FederatedAudience,
				ExpirationSeconds: ptr(int64(contract.FederatedTokenExpirationSeconds)),
				Path:              contract.FederatedTokenFile,
			}}},
		}},
	}
}

func hostPort(host string, port int32) string {
	if port == 80 {
		return host
	}
	return host + ":" + strconv.Itoa(int(port))
}

func ptr[T any](v T) *T { return &v }

// CABundleVolume is the ConfigMap volume of the sidecar's CA bundle (Settings.SidecarCABundleConfigMap).
func CABundleVolume(configMap string) corev1.Volume {
	return corev1.Volume{Name: contract.CABundleVolumeName, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: configMap},
		Items:                []corev1.KeyToPath{{Key: contract.CABundleKey, Path: contract.CABundleKey}},
	}}}
}
