package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// dropNetRaw adds NET_RAW to capabilities.drop of every user container (init and regular) that does not drop
// it, or ALL, already. Container runtimes grant NET_RAW to root containers by default, and with it a packet
// (AF_PACKET) socket sends frames below the pod's nftables rules, around the redirect; on Linux 5.17 and newer
// it also allows setting socket marks. Apps rarely need it (ping uses ICMP datagram sockets where the runtime
// allows them); a container that asks for it explicitly is refused instead (checkContainer). The operations
// use the containers' indices in the pod as the API server sent it, so they must come before any operation
// that inserts or moves containers.
func dropNetRaw(pod *corev1.Pod) patch {
	var p patch
	for _, list := range []struct {
		path string
		cs   []corev1.Container
	}{{"/spec/initContainers", pod.Spec.InitContainers}, {"/spec/containers", pod.Spec.Containers}} {
		for i := range list.cs {
			if c := &list.cs[i]; !isOurs(c.Name) {
				p.dropNetRaw(fmt.Sprintf("%s/%d", list.path, i), c.SecurityContext)
			}
		}
	}
	return p
}

// dropNetRaw adds the operation that makes the container at path drop NET_RAW, adding whichever of
// securityContext, capabilities and drop is missing (JSON patch cannot add below a missing member); none when
// it drops NET_RAW or ALL already.
func (p *patch) dropNetRaw(path string, sc *corev1.SecurityContext) {
	netRaw := []corev1.Capability{"NET_RAW"}
	switch {
	case sc == nil:
		p.add(path+"/securityContext", map[string]any{"capabilities": map[string]any{"drop": netRaw}})
	case sc.Capabilities == nil:
		p.add(path+"/securityContext/capabilities", map[string]any{"drop": netRaw})
	case dropsNetRaw(sc.Capabilities.Drop):
	case sc.Capabilities.Drop == nil:
		p.add(path+"/securityContext/capabilities/drop", netRaw)
	default:
		p.add(path+"/securityContext/capabilities/drop/-", "NET_RAW")
	}
}

func dropsNetRaw(drop []corev1.Capability) bool {
	for _, c := range drop {
		if n := strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_"); n == "NET_RAW" || n == "ALL" {
			return true
		}
	}
	return false
}
