package guard

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
)

const (
	poolKey = "podidentity.io/pool"
	ssA     = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ssa"
	ssB     = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ssb"
)

func rules() Rules {
	return Rules{Pool: &desired.Pool{Key: poolKey, Value: "identities"}, InjectionLabel: contract.NamespaceInjectionLabel,
		TrustedNamespaces: []string{"kube-system"}, TrustedServiceAccounts: []string{"monitoring/agent"}}
}

// injected is a pod as the webhook leaves it.
func injected(ns, name, node string) corev1.Pod {
	p := plain(ns, name, node)
	p.Annotations = map[string]string{contract.IdentitiesAnnotation: "[]"}
	p.Spec.InitContainers = []corev1.Container{{Name: contract.InitContainerName}}
	return p
}

func plain(ns, name, node string) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app"}}}}
}

func withSA(p corev1.Pod, sa string) corev1.Pod { p.Spec.ServiceAccountName = sa; return p }

func nodeOf(name, resource string, pool bool) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{ProviderID: "azure://" + resource + "/virtualMachines/" + name}}
	if pool {
		n.Labels = map[string]string{poolKey: "identities"}
	}
	return n
}

func TestTrustedAndInjected(t *testing.T) {
	opted := map[string]string{contract.NamespaceInjectionLabel: "enabled"}
	forged := plain("other", "forged", "n")
	forged.Annotations = map[string]string{contract.IdentitiesAnnotation: "[]"}
	forged.Spec.InitContainers = []corev1.Container{{Name: contract.InitContainerName}}
	annotationOnly := plain("apps", "a", "n")
	annotationOnly.Annotations = map[string]string{contract.IdentitiesAnnotation: "[]"}
	tests := []struct {
		name             string
		pod              corev1.Pod
		nsLabels         map[string]string
		injected, trusts bool
	}{
		{"injected in an opted-in namespace", injected("apps", "p", "n"), opted, true, false},
		{"hand-written init container and annotation outside an opted-in namespace", forged, nil, false, false},
		{"annotation without the init container", annotationOnly, opted, false, false},
		{"trusted namespace", plain("kube-system", "kube-proxy-x", "n"), nil, false, true},
		{"trusted service account", withSA(plain("monitoring", "agent-x", "n"), "agent"), nil, false, true},
		{"same namespace, other service account", withSA(plain("monitoring", "other-x", "n"), "other"), nil, false, false},
		{"default service account when unset", plain("monitoring", "d", "n"), nil, false, false},
	}
	r := rules()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.Injected(&tc.pod, tc.nsLabels); got != tc.injected {
				t.Errorf("Injected = %v, want %v", got, tc.injected)
			}
			if got := r.Trusted(&tc.pod); got != tc.trusts {
				t.Errorf("Trusted = %v, want %v", got, tc.trusts)
			}
		})
	}
}

func TestAudit(t *testing.T) {
	r := rules()
	nodes := []corev1.Node{nodeOf("pool-0", ssA, true), nodeOf("plain-0", ssB, false), nodeOf("plain-1", ssB, false)}
	msiAssigned := func(resource string) aadv1.AzureAssignedIdentity {
		return aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "x",
			Annotations: map[string]string{desired.ResourceAnnotation: resource}},
			Spec: aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: &aadv1.AzureIdentity{Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI}}}}
	}
	mirror := plain("infra", "static-pool-0", "pool-0")
	mirror.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"}
	done := plain("other", "done", "pool-0")
	done.Status.Phase = corev1.PodSucceeded
	namespaces := []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}}
	tests := []struct {
		name         string
		pods         []corev1.Pod
		assigned     []aadv1.AzureAssignedIdentity
		noPool       bool
		want         []string // pod@node
		wantFragment string
		wantNodes    int
	}{
		{name: "clean pool", pods: []corev1.Pod{injected("apps", "p", "pool-0"), plain("kube-system", "proxy", "pool-0"), plain("other", "web", "plain-0")},
			wantNodes: 1},
		{name: "planted untrusted pod and a static pod on the pool", pods: []corev1.Pod{injected("apps", "p", "pool-0"), plain("other", "planted", "pool-0"), mirror, done},
			want: []string{"infra/static-pool-0@pool-0", "other/planted@pool-0"}, wantFragment: "namespace other is not labelled podidentity.io/injection=enabled", wantNodes: 1},
		{name: "identities still attached outside the pool: its nodes are audited too",
			pods:     []corev1.Pod{plain("other", "web", "plain-1")},
			assigned: []aadv1.AzureAssignedIdentity{msiAssigned(ssB)},
			want:     []string{"other/web@plain-1"}, wantNodes: 3},
		{name: "guard off: only nodes with identities", noPool: true,
			pods:     []corev1.Pod{plain("other", "planted", "pool-0"), plain("other", "web", "plain-0")},
			assigned: []aadv1.AzureAssignedIdentity{msiAssigned(ssB)},
			want:     []string{"other/web@plain-0"}, wantNodes: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := r
			if tc.noPool {
				rr.Pool = nil
			}
			rep := Audit(Input{Nodes: nodes, Pods: tc.pods, Namespaces: namespaces, Assigned: tc.assigned}, rr)
			var got []string
			for _, f := range rep.Untrusted {
				got = append(got, f.Pod+"@"+f.Node)
				if tc.wantFragment != "" && f.Pod == "other/planted" && !strings.Contains(f.Message, tc.wantFragment) {
					t.Errorf("message %q lacks %q", f.Message, tc.wantFragment)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("untrusted = %v, want %v", got, tc.want)
			}
			if rep.IdentityNodes != tc.wantNodes {
				t.Errorf("identity nodes = %d, want %d", rep.IdentityNodes, tc.wantNodes)
			}
		})
	}
}

// TestAuditInCNIMode: with the node plugin fencing every pod that is neither injected nor excepted, the audit
// reports only the pods the fence leaves open: hostNetwork pods, excepted pods, pods of the plugin's exempt
// namespaces that are not trusted here.
func TestAuditInCNIMode(t *testing.T) {
	r := rules()
	r.CNI = &imdspolicy.Policy{InjectionLabel: contract.NamespaceInjectionLabel, SidecarImage: "sidecar:1", ExemptNamespaces: []string{"kube-system", "platform"}, Scope: imdspolicy.ScopeAll}
	host := plain("other", "host", "pool-0")
	host.Spec.HostNetwork = true
	excepted := plain("other", "excepted", "pool-0")
	excepted.Labels = map[string]string{"role": "platform"}
	exceptions := []aadv1.AzurePodIdentityException{{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "platform"},
		Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"role": "platform"}}}}
	pods := []corev1.Pod{injected("apps", "p", "pool-0"), plain("other", "fenced", "pool-0"), host, excepted, plain("platform", "exempt", "pool-0"), plain("kube-system", "proxy", "pool-0")}
	rep := Audit(Input{Nodes: []corev1.Node{nodeOf("pool-0", ssA, true)}, Pods: pods, Exceptions: exceptions,
		Namespaces: []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, {ObjectMeta: metav1.ObjectMeta{Name: "platform"}}}}, r)
	var got []string
	for _, f := range rep.Untrusted {
		got = append(got, f.Pod)
	}
	if want := "other/excepted other/host platform/exempt"; strings.Join(got, " ") != want {
		t.Errorf("reported %v, want %s (the fenced pod is not reported; what the fence leaves open is)", got, want)
	}
}

func TestParseLists(t *testing.T) {
	if got, err := ParseServiceAccounts(" monitoring/agent, kube-system/x "); err != nil || strings.Join(got, ",") != "monitoring/agent,kube-system/x" {
		t.Errorf("got %v, %v", got, err)
	}
	for _, bad := range []string{"agent", "Mon/agent", "/agent"} {
		if _, err := ParseServiceAccounts(bad); err == nil || !strings.Contains(err.Error(), "namespace/name") {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	if got, err := ParseNamespaces("kube-system,,monitoring"); err != nil || len(got) != 2 {
		t.Errorf("got %v, %v", got, err)
	}
	if _, err := ParseNamespaces("Bad_NS"); err == nil {
		t.Error("Bad_NS accepted")
	}
}
