package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/test/emulators/arm"
)

// micObject is an AzureAssignedIdentity as AAD Pod Identity's MIC wrote it: its name, the namespace
// "default" (MIC's choice unless the identity was namespaced), the label nodename, its finalizer, no
// annotation of ours.
func micObject(ns, pod, podNS, node string, id *aadv1.AzureIdentity, status string) *aadv1.AzureAssignedIdentity {
	ref := id.DeepCopy()
	ref.ResourceVersion, ref.UID, ref.ManagedFields = "", "", nil
	ref.Kind, ref.APIVersion = "AzureIdentity", aadv1.GroupVersion.String() // MIC's CRD required both, as ours does
	return &aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: pod + "-" + podNS + "-" + id.Name,
			Labels:     map[string]string{"nodename": node},
			Finalizers: []string{MICFinalizer},
		},
		Spec: aadv1.AzureAssignedIdentitySpec{
			AzureIdentityRef: ref,
			AzureBindingRef: &aadv1.AzureIdentityBinding{
				TypeMeta:   metav1.TypeMeta{Kind: "AzureIdentityBinding", APIVersion: aadv1.GroupVersion.String()},
				ObjectMeta: metav1.ObjectMeta{Namespace: id.Namespace, Name: id.Name},
			},
			Pod: pod, PodNamespace: podNS, NodeName: node,
		},
		Status: aadv1.AzureAssignedIdentityStatus{Status: status, AvailableReplicas: 1},
	}
}

func TestPlanHandover(t *testing.T) {
	idA := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "a"}, Spec: aadv1.AzureIdentitySpec{ResourceID: uami("a")}}
	idB := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "b"}, Spec: aadv1.AzureIdentitySpec{ResourceID: uami("B")}}
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "sp"}, Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "c"}}
	wantOf := func(keys ...string) desired.State {
		st := desired.State{Assignments: map[string]desired.Assignment{}}
		for _, k := range keys { // namespace/name of the object, pod namespace/pod, identity
			f := strings.Split(k, "|")
			ns, name, _ := strings.Cut(f[0], "/")
			podNS, pod, _ := strings.Cut(f[1], "/")
			id := map[string]*aadv1.AzureIdentity{"a": idA, "b": idB, "sp": sp}[f[2]]
			st.Assignments[f[0]] = desired.Assignment{Namespace: ns, Name: name, Pod: pod, PodNamespace: podNS, Identity: id}
		}
		return st
	}
	running := func(names ...string) []corev1.Pod {
		var out []corev1.Pod
		for _, n := range names {
			ns, name, _ := strings.Cut(n, "/")
			phase := corev1.PodRunning
			if strings.HasSuffix(name, "-done") {
				phase = corev1.PodSucceeded
			}
			out = append(out, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Status: corev1.PodStatus{Phase: phase}})
		}
		return out
	}
	deleting := func(o *aadv1.AzureAssignedIdentity) *aadv1.AzureAssignedIdentity {
		o.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		return o
	}
	for _, tc := range []struct {
		name                   string
		mic                    []*aadv1.AzureAssignedIdentity
		want                   desired.State
		pods                   []corev1.Pod
		wantOwned, wantKept    []string
		wantAdopt, wantRelease []string
	}{
		{
			name:      "same name and namespace, wanted: adopted, its identity ours",
			mic:       []*aadv1.AzureAssignedIdentity{micObject("apps", "p", "apps", "n0", idA, "Assigned")},
			want:      wantOf("apps/p-apps-a|apps/p|a"),
			pods:      running("apps/p"),
			wantAdopt: []string{"apps/p-apps-a"}, wantOwned: []string{strings.ToLower(uami("a"))},
		},
		{
			name:        "MIC's default namespace, wanted under ours: released (ours is created), identity ours",
			mic:         []*aadv1.AzureAssignedIdentity{micObject("default", "p", "apps", "n0", idA, "Assigned")},
			want:        wantOf("apps/p-apps-a|apps/p|a"),
			pods:        running("apps/p"),
			wantRelease: []string{"default/p-apps-a"}, wantOwned: []string{strings.ToLower(uami("a"))},
		},
		{
			name:        "pod gone: released, identity ours to detach once unneeded",
			mic:         []*aadv1.AzureAssignedIdentity{micObject("default", "gone", "apps", "n0", idA, "Assigned")},
			want:        wantOf(),
			wantRelease: []string{"default/gone-apps-a"}, wantOwned: []string{strings.ToLower(uami("a"))},
		},
		{
			name:        "pod finished: as gone",
			mic:         []*aadv1.AzureAssignedIdentity{micObject("default", "job-done", "apps", "n0", idA, "Assigned")},
			want:        wantOf(),
			pods:        running("apps/job-done"),
			wantRelease: []string{"default/job-done-apps-a"}, wantOwned: []string{strings.ToLower(uami("a"))},
		},
		{
			name:        "pod running but not served (not injected): released, identity never ours",
			mic:         []*aadv1.AzureAssignedIdentity{micObject("default", "old", "legacy", "n0", idA, "Assigned")},
			want:        wantOf(),
			pods:        running("legacy/old"),
			wantRelease: []string{"default/old-legacy-a"}, wantKept: []string{strings.ToLower(uami("a"))},
		},
		{
			name: "one identity for a served pod and an unserved one: kept wins",
			mic: []*aadv1.AzureAssignedIdentity{
				micObject("apps", "p", "apps", "n0", idA, "Assigned"),
				micObject("default", "old", "legacy", "n0", idA, "Assigned"),
			},
			want:        wantOf("apps/p-apps-a|apps/p|a"),
			pods:        running("apps/p", "legacy/old"),
			wantAdopt:   []string{"apps/p-apps-a"},
			wantRelease: []string{"default/old-legacy-a"}, wantKept: []string{strings.ToLower(uami("a"))},
		},
		{
			name:        "being deleted though wanted: released (it cannot be adopted), ours created",
			mic:         []*aadv1.AzureAssignedIdentity{deleting(micObject("apps", "p", "apps", "n0", idA, "Assigned"))},
			want:        wantOf("apps/p-apps-a|apps/p|a"),
			pods:        running("apps/p"),
			wantRelease: []string{"apps/p-apps-a"}, wantOwned: []string{strings.ToLower(uami("a"))},
		},
		{
			name:        "same name but another identity wanted: released",
			mic:         []*aadv1.AzureAssignedIdentity{micObject("apps", "p", "apps", "n0", idB, "Assigned")},
			want:        wantOf("apps/p-apps-b|apps/p|a"),
			pods:        running("apps/p"),
			wantRelease: []string{"apps/p-apps-b"}, wantKept: []string{strings.ToLower(uami("B"))},
		},
		{
			name:      "service principal: adopted, nothing for the ledger",
			mic:       []*aadv1.AzureAssignedIdentity{micObject("apps", "p", "apps", "n0", sp, "Assigned")},
			want:      wantOf("apps/p-apps-sp|apps/p|sp"),
			pods:      running("apps/p"),
			wantAdopt: []string{"apps/p-apps-sp"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []aadv1.AzureAssignedIdentity
			for _, o := range tc.mic {
				objs = append(objs, *o)
			}
			h := planHandover(objs, tc.want, tc.pods)
			names := func(l []*aadv1.AzureAssignedIdentity) []string {
				var out []string
				for _, o := range l {
					out = append(out, o.Namespace+"/"+o.Name)
				}
				return out
			}
			for _, c := range []struct {
				what      string
				got, want []string
			}{
				{"adopt", names(h.adopt), tc.wantAdopt}, {"release", names(h.release), tc.wantRelease},
				{"owned", h.owned, tc.wantOwned}, {"kept", h.kept, tc.wantKept},
			} {
				if !slices.Equal(c.got, c.want) {
					t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
				}
			}
		})
	}
}

// TestHandoverFromMIC starts the assigner on a cluster as AAD Pod Identity v1.8 leaves it after MIC is
// uninstalled: MIC's AzureAssignedIdentity objects (its namespace, labels and finalizer; one already deleted
// by a user and stuck Terminating), the identities MIC attached on the scale set, a foreign identity, a pod
// that the assigner serves, a pod that is gone and one that still runs un-injected.
func TestHandoverFromMIC(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	var mu sync.Mutex
	var applied [][]string // every identity set ARM applied to the scale set
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond, OnChange: func(_ string, users []string) {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, slices.Clone(users))
	}})
	ss := ssID("pool")
	// MIC attached a (served pod p), g (pod gone), u (pod old, not injected) and t (pod q, whose object a
	// user deleted); "kubelet" is the cluster's own and "foreign" someone else's.
	srv.AddVMSS(ss, false, uami("kubelet"), uami("foreign"), uami("a"), uami("g"), uami("u"), uami("t"))
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	mkNamespaceLabels(t, c, "legacy", nil)
	ids := map[string]*aadv1.AzureIdentity{}
	for _, n := range []string{"a", "g", "u", "t"} {
		ns := "apps"
		if n == "u" {
			ns = "legacy"
		}
		ids[n] = mkIdentity(t, c, ns, n, uami(n))
		mkBinding(t, c, ns, n, n, n)
	}
	mkPod(t, c, "apps", "p", "n0", "a", nil)
	mkPod(t, c, "apps", "q", "n0", "t", nil)
	mkUninjectedPod(t, c, "legacy", "old", "n0", "u", nil)
	for _, o := range []*aadv1.AzureAssignedIdentity{
		micObject("apps", "p", "apps", "n0", ids["a"], aadv1.AssignedIDAssigned), // namespaced identity: same name as ours
		micObject("default", "gone", "apps", "n0", ids["g"], aadv1.AssignedIDAssigned),
		micObject("default", "old", "legacy", "n0", ids["u"], aadv1.AssignedIDAssigned),
		micObject("default", "q", "apps", "n0", ids["t"], aadv1.AssignedIDAssigned),
		micObject("default", "r", "apps", "n9", ids["a"], aadv1.AssignedIDAssigned), // a node scaled away since
	} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// Step 3 of the old migration guide: a user deleted MIC's objects; q's stays Terminating on MIC's finalizer.
	if err := c.Delete(ctx, &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "q-apps-t"}}); err != nil {
		t.Fatal(err)
	}

	stop := startAssigner(t, env, armClient(srv), testOptions())
	defer stop()
	eventually(t, 15*time.Second, "MIC's objects taken over", func() error {
		if err := expectAssigned(c, map[string]string{
			"apps/p-apps-a": aadv1.AssignedIDAssigned, // adopted in place
			"apps/q-apps-t": aadv1.AssignedIDAssigned, // created afresh; MIC's Terminating one released
		}); err != nil {
			return err
		}
		// g's pod is gone: taken into the ledger and detached. u's pod still runs un-injected: left alone.
		return azureHas(srv, ss, false, uami("kubelet"), uami("foreign"), uami("a"), uami("u"), uami("t"))
	})
	var adopted aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, client.ObjectKey{Namespace: "apps", Name: "p-apps-a"}, &adopted); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(adopted.Finalizers, []string{Finalizer}) || adopted.Annotations[desired.ResourceAnnotation] == "" {
		t.Fatalf("adopted object: finalizers %q, annotations %v; want only %q and the resource annotation", adopted.Finalizers, adopted.Annotations, Finalizer)
	}
	for _, k := range []string{"default/gone-apps-g", "default/old-legacy-u", "default/q-apps-t", "default/r-apps-a"} {
		ns, name, _ := strings.Cut(k, "/")
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &aadv1.AzureAssignedIdentity{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("MIC's %s still exists (err %v): it would stay behind, or Terminating, forever", k, err)
		}
	}
	// No identity a running pod uses ever left the scale set, and nobody else's.
	mu.Lock()
	for i, set := range applied {
		for _, need := range []string{"kubelet", "foreign", "a", "u", "t"} {
			if !slices.Contains(set, uami(need)) {
				t.Errorf("ARM change %d dropped %s, which is in use or not ours: %q", i, need, set)
			}
		}
	}
	n := len(applied)
	mu.Unlock()
	t.Logf("handover: 2 objects adopted or recreated, 4 of MIC's released (1 of a node that is gone), 1 identity detached, %d ARM writes", n)

	// What MIC attached is the assigner's now: once p goes, a is detached; u never is.
	deletePod(t, c, "apps", "p")
	eventually(t, 15*time.Second, "a detached once its last pod is gone", func() error {
		return azureHas(srv, ss, false, uami("kubelet"), uami("foreign"), uami("u"), uami("t"))
	})
	deletePod(t, c, "legacy", "old")
	time.Sleep(time.Second) // a pass has run; u must still be there
	if err := azureHas(srv, ss, false, uami("kubelet"), uami("foreign"), uami("u"), uami("t")); err != nil {
		t.Fatal(fmt.Errorf("an identity MIC attached for a pod the assigner never served was touched: %w", err))
	}
}

// TestHoldStopsPasses: while Options.Hold answers an error (the binary: AAD Pod Identity's MIC still runs),
// no pass calls ARM or writes an AzureAssignedIdentity; once it answers nil the assigner converges.
func TestHoldStopsPasses(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	ss := ssID("pool")
	srv.AddVMSS(ss, false, uami("kubelet"))
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "a", uami("a"))
	mkBinding(t, c, "apps", "a", "a", "app")
	var held atomic.Bool
	held.Store(true)
	var asked atomic.Int32
	opts := testOptions()
	opts.HoldRetry = 100 * time.Millisecond
	opts.Hold = func(context.Context) error {
		asked.Add(1)
		if held.Load() {
			return fmt.Errorf("AAD Pod Identity's MIC is running")
		}
		return nil
	}
	stop := startAssigner(t, env, armClient(srv), opts)
	defer stop()
	mkPod(t, c, "apps", "p", "n0", "app", nil)
	// The manager starts and the pod's resource comes up: passes ask Hold again every HoldRetry.
	eventually(t, 15*time.Second, "passes asking Hold", func() error {
		if n := asked.Load(); n < 10 {
			return fmt.Errorf("asked %d times", n)
		}
		return nil
	})
	if counts := srv.Counts(); counts.Reads+counts.Writes != 0 {
		t.Fatalf("ARM was called while holding: %+v", counts)
	}
	if err := expectAssigned(c, map[string]string{}); err != nil {
		t.Fatalf("an AzureAssignedIdentity was written while holding: %v", err)
	}
	held.Store(false)
	eventually(t, 10*time.Second, "converged once released", func() error {
		if err := azureHas(srv, ss, false, uami("kubelet"), uami("a")); err != nil {
			return err
		}
		return expectAssigned(c, map[string]string{"apps/p-apps-a": aadv1.AssignedIDAssigned})
	})
}
