package inject

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestMeshInit(t *testing.T) {
	for _, tc := range []struct {
		name, image string
		want        string // mesh name, "" for none
	}{
		{"istio-init", "anything:1", "Istio"},
		{"linkerd-init", "", "Linkerd"},
		{"init", "docker.io/istio/proxyv2:1.24.0", "Istio"},
		{"init", "gcr.io/istio-release/proxyv2:1.20.1-distroless", "Istio"},
		{"init", "mcr.microsoft.com/oss/istio/proxyv2:1.22.3@sha256:abc", "Istio"},
		{"init", "localhost:5000/istio/proxyv2", "Istio"}, // a registry port is not a tag
		{"init", "docker.io/istio/proxy_init:1.0.0", "Istio"},
		{"init", "cr.l5d.io/linkerd/proxy-init:v2.4.1", "Linkerd"},
		{"init", "gcr.io/linkerd-io/proxy-init:v1.3.11", "Linkerd"},
		{"init", "ghcr.io/linkerd/proxy-init@sha256:abc", "Linkerd"},
		{"init", "registry.example.com/mirror/l5d/proxy-init:v2", "Linkerd"},
		{"init", "registry.example.com/tools/proxyv2:1", ""},       // not an istio repository
		{"init", "registry.example.com/tools/proxy-init:1", ""},    // not a linkerd repository
		{"init", "cr.l5d.io/linkerd/proxy:stable-2.14.10", ""},     // Linkerd's proxy, not its init
		{"init", "docker.io/istio/pilot:1.24.0", ""},               // Istio's control plane
		{"init", "registry.example.com/istio/proxyv2-tools:1", ""}, // another image of an istio repository
		{"Istio-Init", "busybox", ""},                              // names are exact, as the injectors write them
		{"setup", "busybox:1.36", ""},
	} {
		m, ok := meshInit(&corev1.Container{Name: tc.name, Image: tc.image})
		if got := m.name; ok != (tc.want != "") || got != tc.want {
			t.Errorf("meshInit(%q, %q) = %q, %v; want %q", tc.name, tc.image, got, ok, tc.want)
		}
	}
}

// TestMeshRefusal: a recognised mesh init container that adds a network capability is refused with the mesh's
// options instead of "remove it from securityContext.capabilities.add"; anything else keeps the plain message.
// The decision is a denial either way: recognition changes only the words.
func TestMeshRefusal(t *testing.T) {
	cni := DefaultSettings()
	cni.RedirectMode = RedirectCNI
	for _, tc := range []struct {
		name     string
		s        Settings
		bound    bool
		init     bool // an init container (else an app container)
		cname    string
		image    string
		add      string
		want     []string // substrings of the message
		dontWant []string
	}{
		{"istio-init, bound, init mode", DefaultSettings(), true, true, "istio-init", "docker.io/istio/proxyv2:1.24.0", "NET_ADMIN",
			[]string{"Istio's CNI plugin (istio-cni)", "annotation podidentity.io/inject: \"false\"", "can reach the node's IMDS directly", "CNI mode would not help"},
			[]string{"remove it from securityContext.capabilities.add", "redirect.mode=cni), which admits"}},
		{"istio-init, no binding, init mode: CNI mode is an option", DefaultSettings(), false, true, "istio-init", "docker.io/istio/proxyv2:1.24.0", "NET_RAW",
			[]string{"Istio's CNI plugin", "run podidentity in CNI mode (redirect.mode=cni), which admits pods without label aadpodidbinding"},
			[]string{"would not help", "remove it from"}},
		{"linkerd-init, bound, CNI mode", cni, true, true, "linkerd-init", "cr.l5d.io/linkerd/proxy-init:v2.4.1", "NET_ADMIN",
			[]string{"Linkerd's CNI plugin (linkerd-cni)", "fences it off the IMDS address"},
			[]string{"can reach the node's IMDS directly", "remove it from", "would not help"}},
		{"mesh image as an app container: plain message", DefaultSettings(), true, false, "istio-init", "docker.io/istio/proxyv2:1.24.0", "NET_ADMIN",
			[]string{"remove it from securityContext.capabilities.add"}, []string{"istio-cni"}},
		{"mesh init container adding SYS_ADMIN: plain message", DefaultSettings(), true, true, "istio-init", "docker.io/istio/proxyv2:1.24.0", "SYS_ADMIN",
			[]string{"remove it from securityContext.capabilities.add"}, []string{"istio-cni"}},
		{"other init container: plain message", DefaultSettings(), true, true, "vpn-setup", "registry.example.com/vpn:1", "NET_ADMIN",
			[]string{"remove it from securityContext.capabilities.add"}, []string{"CNI plugin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			labels := map[string]string{"app": "x"}
			if tc.bound {
				labels["aadpodidbinding"] = "x"
			}
			c := map[string]any{"name": tc.cname, "image": tc.image, "securityContext": map[string]any{"capabilities": map[string]any{"add": []string{tc.add}}}}
			app := map[string]any{"name": "app", "image": "app:1"}
			spec := map[string]any{"containers": []any{app, c}}
			if tc.init {
				spec = map[string]any{"initContainers": []any{c}, "containers": []any{app}}
			}
			raw, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod",
				"metadata": map[string]any{"name": "p", "namespace": "shop", "labels": labels}, "spec": spec})
			d := Decide(raw, "shop", Cluster{}, tc.s)
			if d.Action != ActionDeny {
				t.Fatalf("action %s, want denied", d.Action)
			}
			for _, w := range tc.want {
				if !strings.Contains(d.Message, w) {
					t.Errorf("message lacks %q:\n%s", w, d.Message)
				}
			}
			for _, w := range tc.dontWant {
				if strings.Contains(d.Message, w) {
					t.Errorf("message has %q:\n%s", w, d.Message)
				}
			}
		})
	}
}
