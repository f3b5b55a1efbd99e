// Package inject decides, for one pod being created, whether the webhook injects the redirect init container
// and the token sidecar, skips the pod, or denies it, and builds the JSON patch. It is pure: raw pod JSON and
// the cluster's bindings, identities and exceptions in, decision out.
//
// The patch is built against the raw object and only ADDs what the webhook owns (containers, volumes, the
// identities annotation, the configured image pull secrets). The pod is decoded into corev1.Pod only to read it: re-encoding it would drop
// fields newer than our k8s.io/api version (Azure Workload Identity #1312).
package inject

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"
	sigsjson "sigs.k8s.io/json"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
)

// Action is what the webhook does with the pod.
type Action string

const (
	ActionInject    Action = "injected"
	ActionUnchanged Action = "unchanged" // already injected (reinvocation): nothing or only repairs to change
	ActionSkip      Action = "skipped"
	ActionDeny      Action = "denied"
)

// Reason is a bounded metric label and Event reason for skips and denials.
type Reason string

const (
	ReasonNone Reason = ""
	// Skips.
	ReasonOptOut      Reason = "opt-out-annotation"
	ReasonException   Reason = "exception"
	ReasonHostNetwork Reason = "host-network"
	ReasonWindows     Reason = "windows"
	// ReasonFencedByCNI: CNI mode, a pod that asks for no identity gets no sidecar; the node's plugin fences
	// it off the IMDS address.
	ReasonFencedByCNI Reason = "no-binding-fenced"
	// Denials.
	ReasonInvalidPod         Reason = "invalid-pod"
	ReasonPrivileged         Reason = "privileged"
	ReasonNetCapability      Reason = "net-capability"
	ReasonCapability         Reason = "capability" // SYS_ADMIN, SYS_PTRACE, SYS_MODULE, BPF
	ReasonSidecarUID         Reason = "sidecar-uid"
	ReasonHostNetworkBinding Reason = "host-network-binding"
	ReasonNameCollision      Reason = "name-collision"
	ReasonTampered           Reason = "tampered-injection"
	ReasonUIDChange          Reason = "uid-change" // --uid-change-policy=deny (uidchange.go)
	// ReasonClassicRestartPolicy: classic mode, a pod meant to finish (restartPolicy Never or OnFailure: a Job's
	// or CronJob's) would never complete, as the classic sidecar never exits.
	ReasonClassicRestartPolicy Reason = "classic-restart-policy"
	// Bound identities left out of an injected pod's annotation (NotServed).
	ReasonSecretNamespace  Reason = "secret-other-namespace" // a service principal's Secret is not in the pod's namespace
	ReasonSecretVolumeName Reason = "invalid-volume-name"    // podidentity-sp-<name> is not a DNS label
	ReasonDuplicateSPName  Reason = "duplicate-name"         // two bound service principals share a name
	ReasonFederatedNoToken Reason = "federated-no-token"     // a federated identity bound after the pod was injected
	// ReasonCredentialMount denies a user container that mounts a volume of the sidecar's credentials (the
	// projected service account token, a service principal's Secret).
	ReasonCredentialMount Reason = "credential-mount"
)

// NotServed is a bound identity the webhook leaves out of the pod's annotation, so the sidecar does not serve
// it, though a binding selects the pod. The pod is injected all the same; the caller makes it visible beyond
// the admission response (a Warning Event on the owner, a metric), since a controller's pods are created by
// kube-controller-manager and nobody reads their admission warnings.
type NotServed struct {
	// Identity is the AzureIdentity's namespace/name.
	Identity string
	Reason   Reason
	// Message is also one of the decision's Warnings: what is wrong and what to do.
	Message string
}

// Cluster is what the webhook read from the API server for this pod.
type Cluster struct {
	Bindings   []aadv1.AzureIdentityBinding
	Identities []aadv1.AzureIdentity
	// Exceptions of the pod's namespace.
	Exceptions []aadv1.AzurePodIdentityException
}

// Decision is the outcome for one pod.
type Decision struct {
	Action Action
	Reason Reason
	// Message explains a denial (what to change) or a skip.
	Message  string
	Warnings []string
	Patch    []jsonpatch.JsonPatchOperation
	// Identities are the identities recorded in the pod annotation (nil unless injected).
	Identities []binding.Identity
	// NotServed lists the bound identities left out of the annotation (also in Warnings).
	NotServed []NotServed
	// SecurityWarnings are the reasons the pod is admitted in a state that weakens its isolation (a skip in an
	// opted-in namespace, a container able to change to the exempt uid under --uid-change-policy=warn). The
	// patch records them in the pod annotation podidentity.io/security-warnings; the caller turns them into
	// Warning Events and metrics.
	SecurityWarnings []Reason
	// Unresolved is set when the pod asks for identities (label aadpodidbinding) and the bindings and
	// identities given to Decide bound none of them, or a binding that selects the pod named an identity it
	// could not use. When those came from a cache, it may only lag behind the API server: the caller should
	// decide again on a live read before it records what the pod is bound to.
	Unresolved bool
}

// Injector decides with fixed settings, with the JSON of the injected objects rendered once.
type Injector struct {
	s Settings
	// JSON of the init container, of the sidecar without secret volumes, and of the identities volume.
	initJSON, sidecarJSON, volumeJSON json.RawMessage
}

// NewInjector renders the settings' containers once; the Injector is read-only and safe for concurrent use.
func NewInjector(s Settings) *Injector {
	return &Injector{s: s, initJSON: mustJSON(InitContainer(s)), sidecarJSON: mustJSON(SidecarContainer(s, nil, false)), volumeJSON: mustJSON(Volumes(nil, false)[0])}
}

// Decide is NewInjector(s).Decide, for callers that decide once.
func Decide(raw []byte, namespace string, cluster Cluster, s Settings) Decision {
	return NewInjector(s).Decide(raw, namespace, cluster)
}

// Decide returns what to do with the pod whose JSON is raw. namespace is the request's namespace, used when
// the object does not carry one (pods created with generateName through a namespaced endpoint do).
func (in *Injector) Decide(raw []byte, namespace string, cluster Cluster) Decision {
	s := in.s
	pod, shape, err := readPod(raw)
	if err != nil {
		return Decision{Action: ActionDeny, Reason: ReasonInvalidPod, Message: fmt.Sprintf("podidentity webhook: the object cannot be read as a pod (%v); fix the manifest", err)}
	}
	if pod.Namespace == "" {
		pod.Namespace = namespace
	}
	skip := func(r Reason, msg string) Decision { return skipped(pod, shape, r, msg) }

	if isWindows(pod) {
		return skip(ReasonWindows, "Windows pods are not injected (the redirect needs Linux nftables): the pod can reach the node's IMDS directly; schedule identity-bearing workloads on Linux nodes")
	}
	if pod.Spec.HostNetwork {
		if binding.Selector(pod) != "" {
			return deny(ReasonHostNetworkBinding, "a hostNetwork pod cannot be isolated from the node's IMDS, so it cannot use label "+aadv1.PodLabelBinding+"; remove hostNetwork: true or the label")
		}
		return skip(ReasonHostNetwork, "hostNetwork pods are not injected: the pod shares the node's network and can reach the node's IMDS directly")
	}
	cni := s.RedirectMode == RedirectCNI
	if strings.EqualFold(pod.Annotations[contract.InjectAnnotation], "false") {
		if cni {
			return fenced(pod, shape, ReasonOptOut, "annotation "+contract.InjectAnnotation+"=false: not injected; the node's podidentity CNI plugin fences the pod off the IMDS address")
		}
		return skip(ReasonOptOut, "annotation "+contract.InjectAnnotation+"=false: not injected; the pod can reach the node's IMDS directly")
	}
	if name, ok := binding.Excepted(pod, cluster.Exceptions); ok {
		return skip(ReasonException, "AzurePodIdentityException "+name+" matches the pod's labels: not injected; the pod can reach the node's IMDS directly")
	}
	if cni && binding.Selector(pod) == "" {
		// Checked after the exception (an excepted pod may reach IMDS and is warned about) and before the
		// container checks: nothing of ours runs in this pod, the plugin's fence is all it gets.
		return fenced(pod, shape, ReasonFencedByCNI, "no label "+aadv1.PodLabelBinding+": no token sidecar; the node's podidentity CNI plugin fences the pod off the IMDS address (label the pod and recreate it to give it identities)")
	}
	if d, bad := guard(pod, s); bad {
		return d
	}
	if d, bad := classicRestartPolicy(pod, s); bad {
		return d
	}
	d, denied, warnings := uidChangeDecision(uidChangeFindings(pod, s, false), s.UIDChangePolicy)
	if denied {
		return d
	}
	var security []Reason
	if len(warnings) > 0 {
		security = append(security, ReasonUIDChange)
	}

	ids, problems := binding.Resolve(pod, cluster.Bindings, cluster.Identities, binding.Options{ForceNamespaced: s.ForceNamespaced})
	unresolved := binding.Selector(pod) != "" && (len(ids) == 0 || len(problems) > 0)
	for _, p := range problems {
		warnings = append(warnings, p.String())
	}
	ids, secretVols, notServed := secretVolumes(pod.Namespace, ids, cluster.Identities)
	federated := slices.ContainsFunc(ids, binding.Identity.Federated)

	placement, refused := placementPatch(pod, s.Placement)
	if refused != nil {
		return *refused
	}
	inj, collision := injectedState(pod)
	if collision != "" {
		return deny(ReasonNameCollision, collision)
	}
	if inj.present && federated && !slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == contract.FederatedTokenVolumeName }) {
		// Injected before a federated identity was bound (a reinvocation after a binding appeared): the pod has
		// no service account token for the sidecar, and a reinvocation adds no volume. Left out, and reported.
		kept := ids[:0:0]
		for _, id := range ids {
			if !id.Federated() {
				kept = append(kept, id)
				continue
			}
			notServed = append(notServed, NotServed{Identity: id.Namespace + "/" + id.Name, Reason: ReasonFederatedNoToken, Message: fmt.Sprintf(
				"podidentity: federated identity %s/%s is not served: the pod was injected before it was bound and has no projected service account token; recreate the pod", id.Namespace, id.Name)})
		}
		ids, federated = kept, false
	}
	for _, n := range notServed {
		warnings = append(warnings, n.Message)
	}
	if inj.present {
		d := reinvoked(raw, pod, inj, ids, secretVols, federated, warnings, security, s)
		if d.Action != ActionDeny {
			d.Patch = append(d.Patch, placement...)
			d.Patch = append(d.Patch, pullSecretsPatch(pod, s.ImagePullSecrets)...)
			d.Unresolved = unresolved
			d.SecurityWarnings = security
			d.NotServed = notServed
		}
		return d
	}

	// Before ours are inserted, while the user containers keep their indices.
	p := dropNetRaw(pod)
	sidecar := in.sidecarJSON
	if len(secretVols) > 0 || federated {
		sidecar = mustJSON(SidecarContainer(s, secretVols, federated))
	}
	ours := []json.RawMessage{in.initJSON}
	if s.Native {
		ours = append(ours, sidecar)
	}
	p.prependTo("/spec/initContainers", len(pod.Spec.InitContainers), ours)
	if !s.Native {
		appendTo(&p, "/spec/containers", len(pod.Spec.Containers), []json.RawMessage{sidecar})
	}
	vols := []json.RawMessage{in.volumeJSON}
	for _, v := range Volumes(secretVols, federated)[1:] {
		vols = append(vols, mustJSON(v))
	}
	if s.SidecarCABundleConfigMap != "" {
		vols = append(vols, mustJSON(CABundleVolume(s.SidecarCABundleConfigMap)))
	}
	appendTo(&p, "/spec/volumes", len(pod.Spec.Volumes), vols)
	p = append(p, placement...)
	p = append(p, pullSecretsPatch(pod, s.ImagePullSecrets)...)
	p.annotations(pod, shape, ownAnnotations(ids, security))
	return Decision{Action: ActionInject, Warnings: warnings, Patch: p, Identities: nonNil(ids), Unresolved: unresolved, SecurityWarnings: security, NotServed: notServed}
}

// ownAnnotations are the values of the annotations only the webhook sets, for an injected pod: "" removes one.
func ownAnnotations(ids []binding.Identity, security []Reason) map[string]string {
	return map[string]string{
		contract.IdentitiesAnnotation:       binding.Encode(ids),
		contract.SecurityWarningsAnnotation: joinReasons(security),
	}
}

func joinReasons(rs []Reason) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = string(r)
	}
	return strings.Join(parts, ",")
}

// podShape records which parts of the raw object exist, since JSON patch cannot add below a missing member.
type podShape struct {
	hasMetadata bool
}

// podView holds the parts of a pod the webhook reads; the rest of the object (env, probes, resources, ...)
// is skipped by the decoder instead of being built, which is most of the cost of an admission.
type podView struct {
	Metadata *struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec *struct {
		RestartPolicy      corev1.RestartPolicy          `json:"restartPolicy"`
		ServiceAccountName string                        `json:"serviceAccountName"`
		HostNetwork        bool                          `json:"hostNetwork"`
		NodeSelector       map[string]string             `json:"nodeSelector"`
		Tolerations        []corev1.Toleration           `json:"tolerations"`
		ImagePullSecrets   []corev1.LocalObjectReference `json:"imagePullSecrets"`
		OS                 *corev1.PodOS                 `json:"os"`
		SecurityContext    *struct {
			RunAsUser    *int64 `json:"runAsUser"`
			RunAsNonRoot *bool  `json:"runAsNonRoot"`
		} `json:"securityContext"`
		InitContainers      []containerView `json:"initContainers"`
		Containers          []containerView `json:"containers"`
		EphemeralContainers []containerView `json:"ephemeralContainers"`
		Volumes             []struct {
			Name string `json:"name"`
		} `json:"volumes"`
	} `json:"spec"`
}

type containerView struct {
	Name            string                         `json:"name"`
	Image           string                         `json:"image"`
	Command         []string                       `json:"command"`
	Args            []string                       `json:"args"`
	SecurityContext *corev1.SecurityContext        `json:"securityContext"`
	RestartPolicy   *corev1.ContainerRestartPolicy `json:"restartPolicy"`
	VolumeMounts    []struct {
		Name string `json:"name"`
	} `json:"volumeMounts"`
}

func (c containerView) container() corev1.Container {
	out := corev1.Container{Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args, SecurityContext: c.SecurityContext, RestartPolicy: c.RestartPolicy}
	for _, m := range c.VolumeMounts {
		out.VolumeMounts = append(out.VolumeMounts, corev1.VolumeMount{Name: m.Name})
	}
	return out
}

// readPod reads the raw object into a corev1.Pod that carries only what the webhook reads. It is never
// encoded again: patches are built against raw.
func readPod(raw []byte) (*corev1.Pod, podShape, error) {
	var v podView
	// Case-sensitive, as the API server reads JSON: a key the patch paths would not find must not be read.
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &v); err != nil {
		return nil, podShape{}, err
	}
	if v.Spec == nil {
		return nil, podShape{}, fmt.Errorf("the pod has no spec")
	}
	pod := &corev1.Pod{}
	if m := v.Metadata; m != nil {
		pod.Name, pod.Namespace, pod.Labels, pod.Annotations = m.Name, m.Namespace, m.Labels, m.Annotations
	}
	sp := v.Spec
	pod.Spec.HostNetwork, pod.Spec.NodeSelector, pod.Spec.OS, pod.Spec.Tolerations = sp.HostNetwork, sp.NodeSelector, sp.OS, sp.Tolerations
	pod.Spec.RestartPolicy, pod.Spec.ImagePullSecrets, pod.Spec.ServiceAccountName = sp.RestartPolicy, sp.ImagePullSecrets, sp.ServiceAccountName
	if sp.SecurityContext != nil {
		pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: sp.SecurityContext.RunAsUser, RunAsNonRoot: sp.SecurityContext.RunAsNonRoot}
	}
	for _, c := range sp.InitContainers {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, c.container())
	}
	for _, c := range sp.Containers {
		pod.Spec.Containers = append(pod.Spec.Containers, c.container())
	}
	for _, c := range sp.EphemeralContainers {
		cc := c.container()
		pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args, SecurityContext: c.SecurityContext, VolumeMounts: cc.VolumeMounts},
		})
	}
	for _, vol := range sp.Volumes {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: vol.Name})
	}
	return pod, podShape{hasMetadata: v.Metadata != nil}, nil
}

// skipped admits the pod without injection. Every skip happens in an opted-in namespace and leaves the pod
// able to reach the node's IMDS directly, so it is a security warning, recorded in the pod's annotation; an
// identities annotation the pod carries is removed: on a pod the webhook did not inject, it is a claim nobody
// checked.
func skipped(pod *corev1.Pod, shape podShape, r Reason, msg string) Decision {
	d := Decision{Action: ActionSkip, Reason: r, Message: msg, Warnings: []string{"podidentity: " + msg}, SecurityWarnings: []Reason{r}}
	var p patch
	p.annotations(pod, shape, map[string]string{contract.IdentitiesAnnotation: "", contract.SecurityWarningsAnnotation: string(r)})
	d.Patch = p
	if _, forged := pod.Annotations[contract.IdentitiesAnnotation]; forged {
		d.Warnings = append(d.Warnings, "podidentity: removed annotation "+contract.IdentitiesAnnotation+": only the webhook sets it")
	}
	return d
}

// fenced admits the pod without injection in CNI mode, where the node's plugin fences it: no security warning,
// and a forged identities annotation is removed as for any skip.
func fenced(pod *corev1.Pod, shape podShape, r Reason, msg string) Decision {
	d := skipped(pod, shape, r, msg)
	d.SecurityWarnings = nil
	d.Warnings = d.Warnings[1:] // the admission warning is for pods left open; the Event and log keep the reason
	var p patch
	p.annotations(pod, shape, map[string]string{contract.IdentitiesAnnotation: "", contract.SecurityWarningsAnnotation: ""})
	d.Patch = p
	return d
}

func deny(r Reason, msg string) Decision {
	return Decision{Action: ActionDeny, Reason: r, Message: "podidentity: " + msg}
}

// guard refuses pods whose containers could undo or bypass the redirect.
func guard(pod *corev1.Pod, s Settings) (Decision, bool) {
	for i := range pod.Spec.InitContainers {
		if d, bad := checkContainer(pod, s, "init container", &pod.Spec.InitContainers[i]); bad {
			return d, true
		}
	}
	for i := range pod.Spec.Containers {
		if d, bad := checkContainer(pod, s, "container", &pod.Spec.Containers[i]); bad {
			return d, true
		}
	}
	return Decision{}, false
}

// refusedCapability says whether no user container of an injected pod may add the capability (name without
// "CAP_", upper case), and what it would let the container do to the isolation.
func refusedCapability(name string) (Reason, string, bool) {
	switch name {
	case "ALL", "NET_ADMIN":
		return ReasonNetCapability, "could undo or bypass the IMDS redirect", true
	case "NET_RAW":
		return ReasonNetCapability, "could send packets around the IMDS redirect (packet sockets skip the pod's nftables rules)", true
	case "SYS_ADMIN":
		return ReasonCapability, "could join the token sidecar's cgroup, whose sockets the redirect exempts, or leave the pod's network namespace", true
	case "SYS_PTRACE":
		return ReasonCapability, "could take over the token sidecar's process and its exempt sockets", true
	case "SYS_MODULE":
		return ReasonCapability, "could load kernel code that bypasses the IMDS redirect", true
	case "BPF":
		return ReasonCapability, "could load programs that change how the kernel handles the pod's traffic", true
	}
	return "", "", false
}

// checkContainer refuses a user container that is privileged, adds a capability that could undo or bypass
// the redirect, or (under the uid exemption) runs as the sidecar's uid. Our own containers (by name) are
// checked elsewhere: a collision or a tampered copy.
func checkContainer(pod *corev1.Pod, s Settings, kind string, c *corev1.Container) (Decision, bool) {
	if kind != "ephemeral container" && (c.Name == contract.InitContainerName || c.Name == contract.SidecarContainerName) {
		return Decision{}, false
	}
	for _, m := range c.VolumeMounts {
		if m.Name == contract.FederatedTokenVolumeName || strings.HasPrefix(m.Name, SecretVolumePrefix) {
			return deny(ReasonCredentialMount, fmt.Sprintf("%s %q mounts volume %q, which carries the token sidecar's credentials (the service account token it exchanges at Azure AD, or a service principal's secret) and is mounted into the sidecar only; remove that volumeMount", kind, c.Name, m.Name)), true
		}
	}
	sc := c.SecurityContext
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		return deny(ReasonPrivileged, fmt.Sprintf("%s %q is privileged and could remove the IMDS redirect; remove securityContext.privileged or opt the pod out with annotation %s: \"false\"", kind, c.Name, contract.InjectAnnotation)), true
	}
	if sc != nil && sc.Capabilities != nil {
		for _, cp := range sc.Capabilities.Add {
			if reason, why, refused := refusedCapability(strings.TrimPrefix(strings.ToUpper(string(cp)), "CAP_")); refused {
				if m, ok := meshInit(c); ok && kind == "init container" && reason == ReasonNetCapability {
					return deny(reason, meshRefusal(pod, s, c, m, cp)), true
				}
				return deny(reason, fmt.Sprintf("%s %q adds capability %s and %s; remove it from securityContext.capabilities.add", kind, c.Name, cp, why)), true
			}
		}
	}
	if s.Exemption != ExemptionUID {
		return Decision{}, false // no uid is exempt: running as the sidecar's uid gains nothing
	}
	var uid *int64
	if pod.Spec.SecurityContext != nil {
		uid = pod.Spec.SecurityContext.RunAsUser
	}
	if sc != nil && sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if uid != nil && *uid == s.SidecarUID {
		return deny(ReasonSidecarUID, fmt.Sprintf("%s %q runs as uid %d, the token sidecar's uid whose traffic bypasses the IMDS redirect; choose another runAsUser", kind, c.Name, s.SidecarUID)), true
	}
	return Decision{}, false
}

// classicRestartPolicy refuses, in classic mode, a pod whose restartPolicy is Never or OnFailure: a Job's or a
// CronJob's pod, or any pod meant to finish. The classic sidecar is an ordinary container that serves until it is
// stopped, and nothing in the pod can tell it the app has finished (it has no API access, and sees no other
// container's processes), so such a pod would run forever after its app exits and its Job never complete.
// Refusing says so at once, where admitting would leave a Job hanging, holding its node's resources, with
// nothing to show why. Native sidecars (Kubernetes 1.29+) stop with the app.
func classicRestartPolicy(pod *corev1.Pod, s Settings) (Decision, bool) {
	policy := pod.Spec.RestartPolicy
	if s.Native || policy == "" || policy == corev1.RestartPolicyAlways {
		return Decision{}, false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "the pod has restartPolicy: %s (a Job's or CronJob's pod) and this webhook runs in classic mode (--mode=classic, or --mode=auto on an API server older than 1.29), "+
		"where the token sidecar is an ordinary container that never exits: the pod would never complete, nor its Job. "+
		"Options: run the webhook with --mode=native (chart webhook.mode; Kubernetes 1.29+), where the sidecar stops when the app's containers have finished; ", policy)
	if binding.Selector(pod) == "" && s.RedirectMode != RedirectCNI {
		fmt.Fprintf(&b, "or run podidentity in CNI mode (redirect.mode=cni), where pods without label %s get no sidecar (the node's plugin fences them off the IMDS address); ", aadv1.PodLabelBinding)
	}
	fmt.Fprintf(&b, "or opt the pod out with annotation %s: \"false\" in its template (it then gets no identity from podidentity ", contract.InjectAnnotation)
	if s.RedirectMode == RedirectCNI {
		b.WriteString("and the node's plugin fences it off the IMDS address)")
	} else {
		b.WriteString("and can reach the node's IMDS directly)")
	}
	return deny(ReasonClassicRestartPolicy, b.String()), true
}

func isWindows(pod *corev1.Pod) bool {
	if pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows {
		return true
	}
	return pod.Spec.NodeSelector[corev1.LabelOSStable] == "windows"
}

// secretVolumes keeps the identities that can be served and lists the secret volumes of the service
// principals among them. A service principal's secret must live in the pod's namespace (the kubelet mounts
// only those); otherwise the identity is left out, and reported. This is deliberate, not a gap to close: the
// only way to serve a Secret of another namespace would be for podidentity to read it on the pod's behalf
// (NMI did, with cluster-wide read access to Secrets), which would let whoever can create an AzureIdentity and
// a binding in one namespace point them at a Secret of any other and use that credential.
func secretVolumes(podNamespace string, ids []binding.Identity, all []aadv1.AzureIdentity) ([]binding.Identity, []SecretVolume, []NotServed) {
	var notServed []NotServed
	var vols []SecretVolume
	kept := ids[:0:0]
	seen := map[string]bool{}
	for _, id := range ids {
		if id.Type == aadv1.UserAssignedMSI || id.Federated() {
			kept = append(kept, id) // no secret: the node's IMDS, or the projected service account token
			continue
		}
		secretNS := id.Namespace
		for i := range all {
			if all[i].Namespace == id.Namespace && all[i].Name == id.Name && all[i].Spec.ClientPassword.Namespace != "" {
				secretNS = all[i].Spec.ClientPassword.Namespace
			}
		}
		vol := SecretVolumePrefix + id.Name
		drop := func(r Reason, format string, args ...any) {
			notServed = append(notServed, NotServed{Identity: id.Namespace + "/" + id.Name, Reason: r, Message: fmt.Sprintf(format, args...)})
		}
		switch {
		case secretNS != podNamespace:
			drop(ReasonSecretNamespace, "podidentity: identity %s/%s is not served: its secret %s/%s must be in the pod's namespace %s "+
				"(a pod can mount only Secrets of its own namespace, and podidentity reads no Secret on a pod's behalf, unlike AAD Pod Identity's NMI); "+
				"copy the Secret into %s and bind the pod to an AzureIdentity of %s whose spec.clientPassword is {name: %s, namespace: %s}",
				id.Namespace, id.Name, secretNS, id.SecretName, podNamespace, podNamespace, podNamespace, id.SecretName, podNamespace)
		case len(validation.IsDNS1123Label(vol)) > 0:
			drop(ReasonSecretVolumeName, "podidentity: identity %s/%s is not served: volume name %q is not a DNS label of at most 63 characters; rename the AzureIdentity (no dots, at most %d characters)", id.Namespace, id.Name, vol, validation.DNS1123LabelMaxLength-len(SecretVolumePrefix))
		case seen[vol]:
			drop(ReasonDuplicateSPName, "podidentity: identity %s/%s is not served: another bound service principal has the same name %s; rename one of them", id.Namespace, id.Name, id.Name)
		default:
			seen[vol] = true
			kept = append(kept, id)
			vols = append(vols, SecretVolume{Identity: id.Name, Volume: vol, Secret: id.SecretName})
		}
	}
	return kept, vols, notServed
}

// injection describes what of ours a pod already carries.
type injection struct {
	present      bool
	initIndex    int
	sidecarIndex int  // in initContainers when sidecarInInit, else in containers
	sidecarInit  bool // the sidecar is an init container (native)
}

// injectedState finds our containers; it reports a collision when the pod carries only part of them or
// volumes with our names, since user objects with our names would be mistaken for ours.
func injectedState(pod *corev1.Pod) (injection, string) {
	inj := injection{initIndex: -1, sidecarIndex: -1}
	for i, c := range pod.Spec.InitContainers {
		switch c.Name {
		case contract.InitContainerName:
			inj.initIndex = i
		case contract.SidecarContainerName:
			inj.sidecarIndex, inj.sidecarInit = i, true
		}
	}
	for i, c := range pod.Spec.Containers {
		if c.Name == contract.InitContainerName {
			return inj, fmt.Sprintf("the pod has a container named %q, which is reserved for the injected init container; rename it", c.Name)
		}
		if c.Name == contract.SidecarContainerName {
			if inj.sidecarIndex >= 0 {
				return inj, fmt.Sprintf("the pod has two containers named %q; rename yours", c.Name)
			}
			inj.sidecarIndex = i
		}
	}
	hasVolume := slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == contract.IdentitiesVolumeName })
	switch {
	case inj.initIndex >= 0 && inj.sidecarIndex >= 0 && hasVolume:
		inj.present = true
		return inj, ""
	case inj.initIndex >= 0 || inj.sidecarIndex >= 0:
		return inj, fmt.Sprintf("the pod has a container named %q or %q, reserved for the injected containers; rename it", contract.InitContainerName, contract.SidecarContainerName)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == contract.IdentitiesVolumeName || v.Name == contract.FederatedTokenVolumeName || v.Name == contract.CABundleVolumeName || strings.HasPrefix(v.Name, SecretVolumePrefix) {
			return inj, fmt.Sprintf("the pod has a volume named %q; names %q, %q, %q and %q* are reserved for the injected volumes; rename it", v.Name, contract.IdentitiesVolumeName, contract.FederatedTokenVolumeName, contract.CABundleVolumeName, SecretVolumePrefix)
		}
	}
	return inj, ""
}

// reinvoked handles a pod that already carries our containers: a reinvocation of this webhook after another
// one changed the pod, or a pod created from an injected pod's spec. Ours must be exactly what this webhook
// injects (else a user could ship a redirect that does nothing); the init container must come first and the
// native sidecar second, and the annotation must match the bindings. Anything already right stays untouched.
func reinvoked(raw []byte, pod *corev1.Pod, inj injection, ids []binding.Identity, secretVols []SecretVolume, federated bool, warnings []string, security []Reason, s Settings) Decision {
	want := InitContainer(s)
	if !sameSecurity(&pod.Spec.InitContainers[inj.initIndex], &want) {
		return deny(ReasonTampered, "the pod carries a podidentity-init container that differs from the one this webhook injects; remove podidentity-init and podidentity-sidecar from the pod spec and let the webhook inject them")
	}
	wantSidecar := SidecarContainer(s, secretVols, federated)
	var sidecar *corev1.Container
	if inj.sidecarInit {
		sidecar = &pod.Spec.InitContainers[inj.sidecarIndex]
	} else {
		sidecar = &pod.Spec.Containers[inj.sidecarIndex]
	}
	if !sameSecurity(sidecar, &wantSidecar) {
		return deny(ReasonTampered, "the pod carries a podidentity-sidecar container that differs from the one this webhook injects; remove podidentity-init and podidentity-sidecar from the pod spec and let the webhook inject them")
	}
	if inj.sidecarInit && (sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
		return deny(ReasonTampered, "the pod carries a podidentity-sidecar init container without restartPolicy: Always; remove podidentity-init and podidentity-sidecar from the pod spec and let the webhook inject them")
	}
	// User containers first, at their current indices (another webhook may have added some).
	p := dropNetRaw(pod)
	// Another webhook may have put its init containers before ours: move ours back to the front, so that
	// nothing runs before the redirect. Moved containers are copied raw, so no field of theirs is lost.
	initIdx, sideIdx := inj.initIndex, inj.sidecarIndex
	if initIdx != 0 || (inj.sidecarInit && sideIdx != 1) {
		var doc struct {
			Spec struct {
				InitContainers []json.RawMessage `json:"initContainers"`
			} `json:"spec"`
		}
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &doc); err != nil || len(doc.Spec.InitContainers) != len(pod.Spec.InitContainers) {
			return deny(ReasonInvalidPod, "podidentity webhook: cannot read spec.initContainers to reorder them; fix the manifest")
		}
		spec := doc.Spec
		rawSidecar := sideIdx
		if initIdx != 0 {
			p.move("/spec/initContainers", initIdx, 0, spec.InitContainers[initIdx])
			if inj.sidecarInit && sideIdx < initIdx {
				sideIdx++
			}
		}
		if inj.sidecarInit && sideIdx != 1 {
			p.move("/spec/initContainers", sideIdx, 1, spec.InitContainers[rawSidecar])
		}
	}
	p.annotations(pod, podShape{hasMetadata: true}, ownAnnotations(ids, security))
	return Decision{Action: ActionUnchanged, Warnings: warnings, Patch: p, Identities: nonNil(ids)}
}

// sameSecurity compares what decides whether a container is the real one: image, command, arguments,
// security context and restart policy. Other webhooks may add env or mounts to every container; that is
// tolerated.
func sameSecurity(got, want *corev1.Container) bool {
	return got.Image == want.Image &&
		slices.Equal(got.Command, want.Command) &&
		slices.Equal(got.Args, want.Args) &&
		equality.Semantic.DeepEqual(got.SecurityContext, want.SecurityContext)
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // API types of our own making: cannot fail
	}
	return b
}

func nonNil(ids []binding.Identity) []binding.Identity {
	if ids == nil {
		return []binding.Identity{}
	}
	return ids
}
