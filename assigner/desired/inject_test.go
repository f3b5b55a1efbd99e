package desired

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
)

func TestInjected(t *testing.T) {
	annotated := pod("ns", "p", "n", "app")
	empty := pod("ns", "p", "n", "app")
	empty.Annotations[contract.IdentitiesAnnotation] = "" // present, even empty: the webhook injected it
	plain := plainPod("ns", "p", "n", "app")
	tests := []struct {
		name     string
		pod      corev1.Pod
		optedIn  bool
		injected bool
	}{
		{"annotated pod in an opted-in namespace", annotated, true, true},
		{"annotation with an empty value counts", empty, true, true},
		{"annotated pod in a namespace not opted in: the webhook never ran there, the annotation proves nothing", annotated, false, false},
		{"no annotation in an opted-in namespace", plain, true, false},
		{"no annotation, namespace not opted in", plain, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Injected(&tc.pod, tc.optedIn); got != tc.injected {
				t.Errorf("Injected = %v, want %v", got, tc.injected)
			}
		})
	}
}

func TestOptedIn(t *testing.T) {
	const key = "podidentity.io/injection"
	tests := []struct {
		labels map[string]string
		label  string
		want   bool
	}{
		{map[string]string{key: "enabled"}, key, true},
		{map[string]string{key: "Enabled"}, key, false}, // the webhook's namespaceSelector matches exactly
		{map[string]string{key: "disabled"}, key, false},
		{map[string]string{key: ""}, key, false},
		{map[string]string{"other": "enabled"}, key, false},
		{map[string]string{"custom/inject": "enabled"}, "custom/inject", true},
		{nil, key, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%v %s", tc.labels, tc.label), func(t *testing.T) {
			if got := OptedIn(tc.labels, tc.label); got != tc.want {
				t.Errorf("OptedIn = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestComputeInjection: only pods the webhook injected get assignments; the others are listed, with why and
// what to do, unless AttachUninjected restores AAD Pod Identity's behaviour.
func TestComputeInjection(t *testing.T) {
	sp := aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sp"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "c", TenantID: "t", ClientPassword: corev1.SecretReference{Name: "s"}}}
	base := Input{
		Nodes:      []corev1.Node{node("n0", ssA+"0")},
		Identities: []aadv1.AzureIdentity{msi("ns", "one", uami("one")), sp},
		Bindings: []aadv1.AzureIdentityBinding{bind("ns", "b1", "one", "app"), bind("ns", "b2", "sp", "app-sp"),
			bind("ns", "b3", "missing", "dangling")},
		Exceptions: []aadv1.AzurePodIdentityException{{ObjectMeta: metav1.ObjectMeta{Namespace: "plain", Name: "e"},
			Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"skip": "yes"}}}},
	}
	labels := optedIn("ns")
	labels["plain"] = map[string]string{"team": "x"}
	labels["off"] = map[string]string{contract.NamespaceInjectionLabel: "disabled"}
	hostNet := pod("ns", "hostnet", "n0", "app")
	delete(hostNet.Annotations, contract.IdentitiesAnnotation)
	hostNet.Spec.HostNetwork = true
	optOut := plainPod("ns", "optout", "n0", "app")
	optOut.Annotations = map[string]string{contract.InjectAnnotation: "False"}
	windows := plainPod("ns", "win", "n0", "app")
	windows.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
	finished := plainPod("plain", "done", "n0", "app")
	finished.Status.Phase = corev1.PodFailed

	tests := []struct {
		name             string
		pods             []corev1.Pod
		custom           string // Injection.Label
		attachUninjected bool
		wantAssignments  []string
		// wantUninjected: pod -> fragments of the message.
		wantUninjected map[string][]string
		wantUnknown    []string
		wantResources  int
	}{
		{name: "injected pod in an opted-in namespace is attached",
			pods:            []corev1.Pod{pod("ns", "p", "n0", "app")},
			wantAssignments: []string{"ns/p-ns-one"}, wantResources: 1},
		{name: "annotated pod in a namespace without the label: nothing, service principals included",
			pods: []corev1.Pod{pod("plain", "p", "n0", "app"), pod("off", "q", "n0", "app-sp")},
			wantUninjected: map[string][]string{
				"plain/p": {"identities ns/one are not attached for this pod", "its namespace plain is not labelled podidentity.io/injection=enabled",
					"kubectl label namespace plain podidentity.io/injection=enabled", "recreate the pod", "--attach-uninjected-pods", "node's IMDS"},
				"off/q": {"identities ns/sp are not attached", "namespace off is not labelled"},
			}},
		{name: "pod without the annotation in an opted-in namespace, by cause",
			pods: []corev1.Pod{plainPod("ns", "old", "n0", "app"), hostNet, optOut, windows},
			wantUninjected: map[string][]string{
				"ns/old":     {"no annotation podidentity.io/identities", "created before namespace ns was opted in", "kubectl rollout restart"},
				"ns/hostnet": {"it uses hostNetwork", "remove hostNetwork: true"},
				"ns/optout":  {"opted out with annotation podidentity.io/inject=false", "remove the annotation"},
				"ns/win":     {"Windows pod", "Linux nodes"},
			}},
		{name: "namespace the input does not know: not attached for now, flagged as provisional",
			pods:           []corev1.Pod{pod("fresh", "p", "n0", "app")},
			wantUninjected: map[string][]string{"fresh/p": {"has not seen namespace fresh yet", "resolves itself"}},
			wantUnknown:    []string{"fresh/p"}},
		{name: "only bound pods are listed: unlabelled, unresolved, unscheduled, finished and excepted pods are not",
			pods: []corev1.Pod{plainPod("plain", "nolabel", "n0", ""), plainPod("plain", "dangling", "n0", "dangling"),
				plainPod("plain", "pending", "", "app"), finished, plainPod("plain", "excepted", "n0", "app", "skip", "yes")}},
		{name: "a custom opt-in label is honoured and the default one no longer counts",
			pods:   []corev1.Pod{pod("ns", "p", "n0", "app"), pod("custom", "q", "n0", "app")},
			custom: "example.com/podidentity",
			wantUninjected: map[string][]string{
				"ns/p": {"namespace ns is not labelled example.com/podidentity=enabled", "kubectl label namespace ns example.com/podidentity=enabled"}},
			wantAssignments: []string{"ns/q-custom-one"}, wantResources: 1},
		{name: "--attach-uninjected-pods: the old behaviour, everything bound is attached",
			pods:             []corev1.Pod{plainPod("plain", "p", "n0", "app"), pod("fresh", "q", "n0", "app"), hostNet},
			attachUninjected: true,
			wantAssignments:  []string{"ns/hostnet-ns-one", "ns/p-plain-one", "ns/q-fresh-one"}, wantResources: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			in.Pods = tc.pods
			in.NamespaceLabels = labels
			if tc.custom != "" {
				in.NamespaceLabels = map[string]map[string]string{"ns": labels["ns"], "custom": {tc.custom: "enabled"}}
			}
			in.Injection = Injection{Label: tc.custom, AttachUninjected: tc.attachUninjected}
			st := Compute(in)
			var got []string
			for k := range st.Assignments {
				got = append(got, k)
			}
			sort.Strings(got)
			if strings.Join(got, " ") != strings.Join(tc.wantAssignments, " ") {
				t.Errorf("assignments = %v, want %v", got, tc.wantAssignments)
			}
			if len(st.Resources) != tc.wantResources {
				t.Errorf("resources = %v, want %d", st.Resources, tc.wantResources)
			}
			if len(st.Uninjected) != len(tc.wantUninjected) {
				t.Fatalf("uninjected = %+v, want %v", st.Uninjected, tc.wantUninjected)
			}
			var unknown []string
			for _, u := range st.Uninjected {
				frags, ok := tc.wantUninjected[u.Pod]
				if !ok || u.Pod != u.Namespace+"/"+u.Name {
					t.Errorf("unexpected uninjected %+v", u)
				}
				for _, f := range frags {
					if !strings.Contains(u.Message, f) {
						t.Errorf("%s: message %q lacks %q", u.Pod, u.Message, f)
					}
				}
				if u.NamespaceUnknown {
					unknown = append(unknown, u.Pod)
				}
			}
			if strings.Join(unknown, " ") != strings.Join(tc.wantUnknown, " ") {
				t.Errorf("namespace unknown for %v, want %v", unknown, tc.wantUnknown)
			}
			// NotInjected is the same decision without placing pods on nodes.
			if a, b := fmt.Sprint(NotInjected(in)), fmt.Sprint(st.Uninjected); a != b {
				t.Errorf("NotInjected = %s, Compute says %s", a, b)
			}
		})
	}
}

func TestNotInjectedMessageListsAtMostFiveIdentities(t *testing.T) {
	in := Input{Nodes: []corev1.Node{node("n0", ssA+"0")}, NamespaceLabels: map[string]map[string]string{"ns": nil}}
	for i := range 8 {
		name := fmt.Sprintf("id%d", i)
		in.Identities = append(in.Identities, msi("ns", name, uami(name)))
		in.Bindings = append(in.Bindings, bind("ns", name, name, "app"))
	}
	in.Pods = []corev1.Pod{pod("ns", "p", "n0", "app")}
	u := NotInjected(in)
	if len(u) != 1 {
		t.Fatalf("uninjected = %v", u)
	}
	if !strings.Contains(u[0].Message, "ns/id4, and 3 more are not attached") || strings.Contains(u[0].Message, "ns/id5") {
		t.Errorf("message %q", u[0].Message)
	}
	if len(u[0].Message) > 1000 {
		t.Errorf("message is %d bytes, longer than an Event's note may be", len(u[0].Message))
	}
}
