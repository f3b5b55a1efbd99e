package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
)

// mesh is a service mesh whose init container programs the pod's iptables with NET_ADMIN and NET_RAW when the
// mesh's own CNI plugin is not installed.
type mesh struct {
	name, initContainer, cniPlugin string
}

var (
	meshIstio   = mesh{name: "Istio", initContainer: "istio-init", cniPlugin: "Istio's CNI plugin (istio-cni)"}
	meshLinkerd = mesh{name: "Linkerd", initContainer: "linkerd-init", cniPlugin: "Linkerd's CNI plugin (linkerd-cni)"}
)

// meshInit recognises a service mesh's init container: by the name the mesh's injector gives it, or by the
// image the mesh runs it from (Istio: .../proxyv2 or the older .../proxy_init of an istio repository; Linkerd:
// .../proxy-init of a linkerd or l5d repository), whatever the registry, tag or digest.
//
// The result only chooses the wording of a refusal: the container is refused all the same. Neither a name nor an
// image can make a container with NET_ADMIN safe in an isolated pod, since the pod's author chooses both, and the
// command: a container named istio-init running the proxyv2 image can flush the redirect as well as any other.
func meshInit(c *corev1.Container) (mesh, bool) {
	switch c.Name {
	case meshIstio.initContainer:
		return meshIstio, true
	case meshLinkerd.initContainer:
		return meshLinkerd, true
	}
	repo := strings.ToLower(c.Image)
	if i := strings.IndexByte(repo, '@'); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i] // a tag, not a registry's port
	}
	dir, last := "", repo
	if i := strings.LastIndexByte(repo, '/'); i >= 0 {
		dir, last = repo[:i], repo[i+1:]
	}
	switch {
	case (last == "proxyv2" || last == "proxy_init") && strings.Contains(dir, "istio"):
		return meshIstio, true
	case last == "proxy-init" && (strings.Contains(dir, "linkerd") || strings.Contains(dir, "l5d")):
		return meshLinkerd, true
	}
	return mesh{}, false
}

// meshRefusal is the refusal of a mesh's init container that adds a network capability. Removing the capability
// is not an option its user has (the mesh's injector adds the container), so it names the real ones: the mesh's
// CNI plugin, podidentity's CNI mode where it would admit the pod, and the opt-out with what it costs.
func meshRefusal(pod *corev1.Pod, s Settings, c *corev1.Container, m mesh, capability corev1.Capability) string {
	var b strings.Builder
	fmt.Fprintf(&b, "init container %q adds capability %s and could undo or bypass the IMDS redirect: it is %s's init container, "+
		"which programs the pod's network when %s is not installed, and no container of an isolated pod may hold %s. "+
		"Options: install %s, which replaces %s and adds no capability to the pod; ",
		c.Name, capability, m.name, m.cniPlugin, capability, m.cniPlugin, m.initContainer)
	bound := binding.Selector(pod) != ""
	if !bound && s.RedirectMode != RedirectCNI {
		fmt.Fprintf(&b, "or run podidentity in CNI mode (redirect.mode=cni), which admits pods without label %s as they are (no token sidecar; the node's plugin fences them off the IMDS address); ", aadv1.PodLabelBinding)
	}
	fmt.Fprintf(&b, "or opt the pod out with annotation %s: \"false\" or leave its namespace unlabelled (the pod then gets no identity from podidentity ", contract.InjectAnnotation)
	if s.RedirectMode == RedirectCNI {
		b.WriteString("and the node's plugin fences it off the IMDS address; in an unlabelled namespace only with cni.fenceScope=all)")
	} else {
		b.WriteString("and can reach the node's IMDS directly)")
	}
	if bound && s.RedirectMode != RedirectCNI {
		fmt.Fprintf(&b, ". podidentity's CNI mode would not help: it refuses the same for a pod that asks for identities (label %s)", aadv1.PodLabelBinding)
	}
	return b.String()
}
