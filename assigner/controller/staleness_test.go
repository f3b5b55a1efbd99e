package controller

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// liveNamespaces is the API server as the reconciler's live reader sees it: namespaces come from ns, every
// other object from rest (the ledger's ConfigMaps).
type liveNamespaces struct {
	client.Reader
	ns client.Reader
}

func (l liveNamespaces) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*corev1.Namespace); ok {
		return l.ns.Get(ctx, key, obj, opts...)
	}
	return l.Reader.Get(ctx, key, obj, opts...)
}

type nopRecorder struct{}

func (nopRecorder) Eventf(runtime.Object, runtime.Object, string, string, string, string, ...interface{}) {
}

// TestOptInConfirmedBeforeAttaching: a namespace the cache shows opted in is re-read from the API server
// before a pass attaches anything new for its pods, so a cache that still shows a label just removed (or a
// namespace just deleted) attaches nothing; the other way round the cache's "not opted in" is trusted (it is
// the safe answer, and the namespace watch brings the pods back when it changes).
func TestOptInConfirmedBeforeAttaching(t *testing.T) {
	enabled := map[string]string{contract.NamespaceInjectionLabel: "enabled"}
	tests := []struct {
		name        string
		cached      map[string]string // labels of namespace apps in the cache
		live        map[string]string // and in the API server; nil with liveMissing
		liveMissing bool
		wantWrites  int
		wantObjects int
	}{
		{name: "opted in, confirmed", cached: enabled, live: enabled, wantWrites: 1, wantObjects: 1},
		{name: "label removed, the cache has not seen it", cached: enabled, live: map[string]string{}, wantWrites: 0, wantObjects: 0},
		{name: "label set to another value, the cache has not seen it", cached: enabled,
			live: map[string]string{contract.NamespaceInjectionLabel: "disabled"}, wantWrites: 0, wantObjects: 0},
		{name: "namespace deleted, the cache has not seen it", cached: enabled, liveMissing: true, wantWrites: 0, wantObjects: 0},
		{name: "label added, the cache has not seen it: not attached for now", cached: map[string]string{}, live: enabled, wantWrites: 0, wantObjects: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			srv := arm.New(t, arm.Options{})
			ss := ssID("pool")
			srv.AddVMSS(ss, false)
			scheme := testenv.Scheme()
			objs := []client.Object{
				&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n0"}, Spec: corev1.NodeSpec{ProviderID: instanceOf(ss, 0)}},
				&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: tc.cached}},
				&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "a"},
					Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami("a"), ClientID: arm.ClientIDOf(uami("a"))}},
				&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "a"},
					Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "a", Selector: "app"}},
				&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "p", Labels: map[string]string{aadv1.PodLabelBinding: "app"},
					Annotations: map[string]string{contract.IdentitiesAnnotation: "[]"}}, Spec: corev1.PodSpec{NodeName: "n0"}},
			}
			cb := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...)
			for _, ix := range indexes() {
				cb = cb.WithIndex(ix.obj, ix.field, ix.extract)
			}
			cache := cb.Build()
			apiNS := fake.NewClientBuilder().WithScheme(scheme)
			if !tc.liveMissing {
				apiNS = apiNS.WithObjects(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: tc.live}})
			}
			live := liveNamespaces{Reader: cache, ns: apiNS.Build()}
			opts := testOptions()
			opts.defaults()
			r := &resourceReconciler{c: cache, reader: live, arm: azure.Client(armClient(srv)), opts: opts,
				metrics: newMetrics(prometheus.NewRegistry()), recorder: nopRecorder{},
				ledger: &ledger{c: cache, reader: live, namespace: ledgerNS}, keep: immutableSet(nil), states: map[string]*resourceState{}}

			key := nodeResourceKey(&corev1.Node{Spec: corev1.NodeSpec{ProviderID: instanceOf(ss, 0)}})
			pass, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if _, err := r.Reconcile(pass, reconcile.Request{NamespacedName: types.NamespacedName{Name: key}}); err != nil {
				t.Fatal(err)
			}
			if n := srv.WritesTo(ss); n != tc.wantWrites {
				t.Errorf("%d PATCHes, want %d", n, tc.wantWrites)
			}
			var aais aadv1.AzureAssignedIdentityList
			if err := cache.List(ctx, &aais); err != nil {
				t.Fatal(err)
			}
			if len(aais.Items) != tc.wantObjects {
				t.Errorf("%d AzureAssignedIdentity objects, want %d", len(aais.Items), tc.wantObjects)
			}
		})
	}
}

// TestNewGrants: the namespaces whose opt-in a pass confirms are those of pods that would get something
// new: an object that does not exist, or an identity not known to be attached (unless managed).
func TestNewGrants(t *testing.T) {
	id := func(name string) *aadv1.AzureIdentity {
		return &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ids", Name: name}, Spec: aadv1.AzureIdentitySpec{ResourceID: uami(name)}}
	}
	want := desired.State{Assignments: map[string]desired.Assignment{
		"ids/p-a-x": {Name: "p-a-x", Namespace: "ids", PodNamespace: "a", Identity: id("x"), NeedsARM: true},
		"ids/q-b-y": {Name: "q-b-y", Namespace: "ids", PodNamespace: "b", Identity: id("y"), NeedsARM: true},
		"ids/r-c-s": {Name: "r-c-s", Namespace: "ids", PodNamespace: "c", Identity: id("sp")}, // service principal
	}}
	existing := func(names ...string) []aadv1.AzureAssignedIdentity {
		var out []aadv1.AzureAssignedIdentity
		for _, n := range names {
			out = append(out, aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ids", Name: n}})
		}
		return out
	}
	attached := func(ids ...string) *azure.ResourceIdentity {
		r := &azure.ResourceIdentity{UserAssigned: map[string]string{}}
		for _, i := range ids {
			r.UserAssigned[strings.ToLower(uami(i))] = uami(i)
		}
		return r
	}
	tests := []struct {
		name     string
		existing []aadv1.AzureAssignedIdentity
		cur      *azure.ResourceIdentity
		managed  bool
		want     string
	}{
		{name: "nothing exists yet", want: "a b c"},
		{name: "objects exist, ARM state unknown", existing: existing("p-a-x", "q-b-y", "r-c-s"), want: "a b"},
		{name: "objects exist, one identity attached", existing: existing("p-a-x", "q-b-y", "r-c-s"), cur: attached("x"), want: "b"},
		{name: "everything in place", existing: existing("p-a-x", "q-b-y", "r-c-s"), cur: attached("x", "y")},
		{name: "managed: objects are all", existing: existing("p-a-x", "r-c-s"), managed: true, want: "b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := newGrants(want, tc.existing, tc.cur, tc.managed)
			var names []string
			for ns := range got {
				names = append(names, ns)
			}
			sort.Strings(names)
			if strings.Join(names, " ") != tc.want {
				t.Errorf("newGrants = %v, want %q", names, tc.want)
			}
		})
	}
}
