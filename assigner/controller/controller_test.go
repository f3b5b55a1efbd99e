package controller

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/promtest"
)

// TestAssignAndDetach: pods on two scale sets and a standalone VM get their identities attached and their
// AzureAssignedIdentity objects Assigned; identities go when their last pod goes, and foreign,
// system-assigned, immutable and cluster identities never do.
func TestAssignAndDetach(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	srv := arm.New(t, arm.Options{Latency: 100 * time.Millisecond})
	ss1, ss2, vm1 := ssID("pool1"), ssID("pool2"), vmID("standalone")
	srv.AddVMSS(ss1, true, uami("kubelet"))     // system-assigned + the cluster's kubelet identity
	srv.AddVMSS(ss2, false)                     // nothing yet
	srv.AddVM(vm1, false, uami("user-tooling")) // someone else's identity
	mkNode(t, c, "ss1-0", instanceOf(ss1, 0))
	// Kubernetes and Azure disagree on casing: the second instance spells the resource group differently.
	mkNode(t, c, "ss1-1", instanceOf(strings.Replace(ss1, "MC_rg", "mc_RG", 1), 1))
	mkNode(t, c, "ss2-0", instanceOf(ss2, 0))
	mkNode(t, c, "vm", "azure://"+vm1)

	ns := "apps"
	mkNamespace(t, c, ns)
	mkIdentity(t, c, ns, "a", uami("a"))
	mkIdentity(t, c, ns, "b", uami("b"))
	mkIdentity(t, c, ns, "imm", uami("immutable"))
	mkIdentity(t, c, ns, "cluster", uami("cluster"))
	mkIdentity(t, c, ns, "kubelet", uami("kubelet"))
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sp"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "app", TenantID: "t", ClientPassword: corev1.SecretReference{Name: "sp-secret"}}}
	if err := c.Create(ctx, sp); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][3]string{{"bind-a", "a", "sel-a"}, {"bind-b", "b", "sel-b"}, {"bind-imm", "imm", "sel-imm"},
		{"bind-cluster", "cluster", "sel-cluster"}, {"bind-kubelet", "kubelet", "sel-kubelet"}, {"bind-sp", "sp", "sel-sp"}} {
		mkBinding(t, c, ns, b[0], b[1], b[2])
	}
	opts := testOptions()
	// The immutable list names one identity by resource id and the cluster's identity by client id.
	opts.Immutable = []string{strings.ToUpper(uami("immutable")), arm.ClientIDOf(uami("cluster"))}
	// The pods exist before the assigner starts, so its first pass sees all of them: one PATCH per resource
	// does not depend on the pods' creation fitting in a debounce window (under load it did not, once).
	mkPod(t, c, ns, "p1", "ss1-0", "sel-a", nil)
	mkPod(t, c, ns, "p2", "ss1-1", "sel-a", nil)
	mkPod(t, c, ns, "p3", "ss2-0", "sel-b", nil)
	mkPod(t, c, ns, "p4", "vm", "sel-a", nil)
	mkPod(t, c, ns, "p5", "ss2-0", "sel-imm", nil)
	mkPod(t, c, ns, "p6", "ss1-0", "sel-kubelet", nil)
	mkPod(t, c, ns, "p7", "vm", "sel-cluster", nil)
	mkPod(t, c, ns, "p8", "ss2-0", "sel-sp", nil)
	mkPod(t, c, ns, "pending", "", "sel-b", nil) // not scheduled: nothing to do
	startAssigner(t, env, armClient(srv), opts)

	A := aadv1.AssignedIDAssigned
	eventually(t, 20*time.Second, "everything assigned", func() error {
		for _, err := range []error{
			azureHas(srv, ss1, true, uami("kubelet"), uami("a")),
			azureHas(srv, ss2, false, uami("b"), uami("immutable")),
			azureHas(srv, vm1, false, uami("user-tooling"), uami("a"), uami("cluster")),
			expectAssigned(c, map[string]string{
				"apps/p1-apps-a": A, "apps/p2-apps-a": A, "apps/p3-apps-b": A, "apps/p4-apps-a": A,
				"apps/p5-apps-imm": A, "apps/p6-apps-kubelet": A, "apps/p7-apps-cluster": A, "apps/p8-apps-sp": A,
			}),
		} {
			if err != nil {
				return err
			}
		}
		return nil
	})
	// One PATCH per resource: every pod found in one pass.
	for _, id := range []string{ss1, ss2, vm1} {
		if n := srv.WritesTo(id); n != 1 {
			t.Errorf("%s received %d PATCHes, want 1", id, n)
		}
	}
	var aai aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "p1-apps-a"}, &aai); err != nil {
		t.Fatal(err)
	}
	if aai.Spec.Pod != "p1" || aai.Spec.PodNamespace != ns || aai.Spec.NodeName != "ss1-0" || aai.Spec.AzureIdentityRef.Name != "a" ||
		aai.Spec.AzureBindingRef.Name != "bind-a" || len(aai.Finalizers) != 1 || !strings.EqualFold(aai.Annotations[desired.ResourceAnnotation], ss1) {
		t.Errorf("AzureAssignedIdentity fields: %+v", aai)
	}

	// p1 goes; p2 on another node of the same scale set still uses a.
	deletePod(t, c, ns, "p1")
	eventually(t, 10*time.Second, "p1's assignment gone", func() error {
		st, err := assignedStates(c)
		if _, ok := st["apps/p1-apps-a"]; ok || err != nil {
			return fmt.Errorf("still there (%w)", err)
		}
		return nil
	})
	if err := azureHas(srv, ss1, true, uami("kubelet"), uami("a")); err != nil {
		t.Fatalf("identity still used on the scale set was removed: %v", err)
	}
	// Last users go: a leaves ss1 (kubelet, foreign and bound, stays; system-assigned stays); on ss2 b goes,
	// the immutable one stays; on the VM a goes, the cluster's and the foreign identity stay.
	for _, p := range []string{"p2", "p3", "p4", "p5", "p6", "p7", "p8"} {
		deletePod(t, c, ns, p)
	}
	eventually(t, 20*time.Second, "everything detached", func() error {
		for _, err := range []error{
			azureHas(srv, ss1, true, uami("kubelet")),
			azureHas(srv, ss2, false, uami("immutable")),
			azureHas(srv, vm1, false, uami("user-tooling"), uami("cluster")),
			expectAssigned(c, map[string]string{}),
		} {
			if err != nil {
				return err
			}
		}
		return nil
	})
	// A quiet resync sends nothing.
	before := srv.Counts().Writes
	time.Sleep(500 * time.Millisecond)
	if after := srv.Counts().Writes; after != before {
		t.Fatalf("%d PATCHes without any change", after-before)
	}
}

// TestRejectedIdentityIsIsolated: an identity ARM refuses does not block the others; its assignment says
// why, its AzureIdentity gets a Warning Event, and once fixed it is attached.
func TestRejectedIdentityIsIsolated(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	ss := ssID("pool")
	srv.AddVMSS(ss, false)
	mkNode(t, c, "n0", instanceOf(ss, 0))
	ns := "apps"
	mkNamespace(t, c, ns)
	mkIdentity(t, c, ns, "good", uami("good"))
	mkIdentity(t, c, ns, "norole", uami("norole"))
	mkIdentity(t, c, ns, "deleted", uami("deleted"))
	for _, n := range []string{"good", "norole", "deleted"} {
		mkBinding(t, c, ns, n, n, "app")
	}
	srv.DenyIdentity(uami("norole"), arm.CodeLinkedAuthorizationFailed)
	srv.DenyIdentity(uami("deleted"), arm.CodeFailedIdentityOperation)
	opts := testOptions()
	opts.IsolationTTL = 2 * time.Second
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	startAssigner(t, env, armClient(srv), opts)
	mkPod(t, c, ns, "p", "n0", "app", nil)

	eventually(t, 15*time.Second, "good attached, others isolated", func() error {
		if err := azureHas(srv, ss, false, uami("good")); err != nil {
			return err
		}
		if err := expectAssigned(c, map[string]string{"apps/p-apps-good": aadv1.AssignedIDAssigned,
			"apps/p-apps-norole": aadv1.AssignedIDCreated, "apps/p-apps-deleted": aadv1.AssignedIDCreated}); err != nil {
			return err
		}
		// What an operator alerts on: identities ARM refused, and assignments that stay Created.
		if err := expectSeries(t, reg, "podidentity_assigner_isolated_identities",
			unattached(map[string]float64{ReasonIdentityNotAuthorized: 1, ReasonIdentityNotFound: 1})); err != nil {
			return err
		}
		return expectAssignmentGauge(t, reg, map[string]float64{"Created/under_5m": 2, "Assigned/under_5m": 1})
	})
	var aai aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "p-apps-norole"}, &aai); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(aai.Annotations[desired.ErrorAnnotation], "Managed Identity Operator") {
		t.Errorf("assignment does not say what is missing: %q", aai.Annotations[desired.ErrorAnnotation])
	}
	eventually(t, 10*time.Second, "warning events on both identities", func() error {
		var evs corev1.EventList
		if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		found := map[string]string{}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && e.InvolvedObject.Kind == "AzureIdentity" {
				found[e.InvolvedObject.Name] = e.Message
			}
		}
		if !strings.Contains(found["norole"], "Managed Identity Operator") || !strings.Contains(found["deleted"], "deleted") {
			return fmt.Errorf("events: %v", found)
		}
		return nil
	})
	// The role is granted and the identity recreated: both are attached on the next try.
	srv.DenyIdentity(uami("norole"), "")
	srv.DenyIdentity(uami("deleted"), "")
	eventually(t, 15*time.Second, "isolated identities attached after the fix", func() error {
		if err := azureHas(srv, ss, false, uami("good"), uami("norole"), uami("deleted")); err != nil {
			return err
		}
		if err := expectAssigned(c, map[string]string{"apps/p-apps-good": aadv1.AssignedIDAssigned,
			"apps/p-apps-norole": aadv1.AssignedIDAssigned, "apps/p-apps-deleted": aadv1.AssignedIDAssigned}); err != nil {
			return err
		}
		if err := expectSeries(t, reg, "podidentity_assigner_isolated_identities", unattached(nil)); err != nil {
			return err
		}
		return expectAssignmentGauge(t, reg, map[string]float64{"Assigned/under_5m": 3})
	})
}

// expectAssignmentGauge compares podidentity_assigner_assigned_identities with want ("status/age" -> count;
// every other series must be 0).
func expectAssignmentGauge(t testing.TB, reg *prometheus.Registry, want map[string]float64) error {
	got := map[string]float64{}
	for k, v := range promtest.Series(t, reg, "podidentity_assigner_assigned_identities") {
		if v != 0 {
			got[k] = v
		}
	}
	full := map[string]float64{}
	for k, v := range want {
		status, age, _ := strings.Cut(k, "/")
		full["age="+age+",status="+status] = v
	}
	if fmt.Sprint(got) != fmt.Sprint(full) {
		return fmt.Errorf("podidentity_assigner_assigned_identities = %v, want %v", got, full)
	}
	return nil
}

// TestDriftRepair: identities that disappear from a resource (an AKS node image upgrade did this) are
// re-added on the next periodic read.
func TestDriftRepair(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{})
	ss := ssID("pool")
	srv.AddVMSS(ss, false, uami("kubelet"))
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "a", uami("a"))
	mkBinding(t, c, "apps", "a", "a", "app")
	opts := testOptions()
	opts.Resync = 500 * time.Millisecond
	startAssigner(t, env, armClient(srv), opts)
	mkPod(t, c, "apps", "p", "n0", "app", nil)
	eventually(t, 10*time.Second, "attached", func() error { return azureHas(srv, ss, false, uami("kubelet"), uami("a")) })
	srv.SetUserIdentities(ss, uami("kubelet")) // lost
	eventually(t, 10*time.Second, "re-attached", func() error { return azureHas(srv, ss, false, uami("kubelet"), uami("a")) })
}

// TestBindingChangeUpdatesAnnotation: a running pod's podidentity.io/identities follows its bindings.
func TestBindingChangeUpdatesAnnotation(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	srv := arm.New(t, arm.Options{})
	ss := ssID("pool")
	srv.AddVMSS(ss, false)
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "first", uami("first"))
	mkIdentity(t, c, "apps", "second", uami("second"))
	startAssigner(t, env, armClient(srv), testOptions())
	mkPod(t, c, "apps", "injected", "n0", "app", map[string]string{contract.IdentitiesAnnotation: "[]"})
	mkUninjectedPod(t, c, "apps", "plain", "n0", "app", nil) // not injected: left alone

	annotation := func(name string) ([]binding.Identity, bool, error) {
		var p corev1.Pod
		if err := c.Get(ctx, client.ObjectKey{Namespace: "apps", Name: name}, &p); err != nil {
			return nil, false, err
		}
		v, ok := p.Annotations[contract.IdentitiesAnnotation]
		ids, err := binding.Decode(v)
		return ids, ok, err
	}
	names := func(ids []binding.Identity) string {
		var out []string
		for _, id := range ids {
			out = append(out, id.Name)
		}
		return strings.Join(out, ",")
	}
	b := mkBinding(t, c, "apps", "bind", "first", "app")
	eventually(t, 10*time.Second, "annotation lists the new binding's identity", func() error {
		ids, _, err := annotation("injected")
		if err != nil || names(ids) != "first" || ids[0].ResourceID != uami("first") {
			return fmt.Errorf("identities %+v (%w)", ids, err)
		}
		return nil
	})
	b.Spec.AzureIdentity = "second"
	if err := c.Update(ctx, b); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "annotation follows the binding", func() error {
		ids, _, err := annotation("injected")
		if err != nil || names(ids) != "second" {
			return fmt.Errorf("identities %+v (%w)", ids, err)
		}
		return nil
	})
	eventually(t, 10*time.Second, "and Azure follows too", func() error { return azureHas(srv, ss, false, uami("second")) })
	if _, ok, err := annotation("plain"); err != nil || ok {
		t.Fatalf("a pod without the annotation got one (%v)", err)
	}
}

// TestManagedModeAndVanishedResource: in managed mode nothing calls ARM and assignments are Assigned at
// once; without managed mode, a VM deleted from Azure leaves no assignment stuck behind.
func TestManagedModeAndVanishedResource(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	mkNode(t, c, "n0", instanceOf(ssID("pool"), 0))
	mkNode(t, c, "gone", "azure://"+vmID("deleted-vm"))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "a", uami("a"))
	mkBinding(t, c, "apps", "a", "a", "app")
	opts := testOptions()
	opts.Managed = true
	stop := startAssigner(t, env, nil, opts)
	mkPod(t, c, "apps", "p", "n0", "app", nil)
	eventually(t, 10*time.Second, "assigned without ARM", func() error {
		return expectAssigned(c, map[string]string{"apps/p-apps-a": aadv1.AssignedIDAssigned})
	})
	deletePod(t, c, "apps", "p")
	eventually(t, 10*time.Second, "released", func() error { return expectAssigned(c, map[string]string{}) })
	stop()

	srv := arm.New(t, arm.Options{}) // knows no VM named deleted-vm
	startAssigner(t, env, armClient(srv), testOptions())
	mkPod(t, c, "apps", "q", "gone", "app", nil)
	eventually(t, 10*time.Second, "assignment created", func() error {
		st, err := assignedStates(c)
		if err != nil || st["apps/q-apps-a"] == "" {
			return fmt.Errorf("states %v (%w)", st, err)
		}
		return nil
	})
	deletePod(t, c, "apps", "q")
	eventually(t, 10*time.Second, "assignment on a vanished VM released", func() error { return expectAssigned(c, map[string]string{}) })
	if w := srv.Counts().Writes; w != 0 {
		t.Fatalf("%d PATCHes to a VM that does not exist", w)
	}
}

// TestAnnotationListsOnlyServableIdentities: a binding change that adds service principals to a running pod's
// identities annotation adds only those whose secret the pod mounts (the webhook's volume): one whose secret
// is in another namespace, or that was bound after the pod was created, would make the sidecar answer a
// configuration error instead of "not bound", so it stays out, while a managed identity goes in.
func TestAnnotationListsOnlyServableIdentities(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	srv := arm.New(t, arm.Options{})
	ss := ssID("pool")
	srv.AddVMSS(ss, false)
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	mkNamespace(t, c, "other")
	sp := func(ns, name, secretNS string) {
		if err := c.Create(ctx, &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.ServicePrincipal, ClientID: name + "-client", TenantID: "t",
			ClientPassword: corev1.SecretReference{Name: name + "-secret", Namespace: secretNS}}}); err != nil {
			t.Fatal(err)
		}
	}
	sp("apps", "mounted", "apps")
	sp("other", "elsewhere", "other")
	mkIdentity(t, c, "apps", "msi", uami("msi"))
	startAssigner(t, env, armClient(srv), testOptions())
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "p", Labels: map[string]string{aadv1.PodLabelBinding: "app"},
			Annotations: map[string]string{contract.IdentitiesAnnotation: "[]"}},
		Spec: corev1.PodSpec{NodeName: "n0", Containers: []corev1.Container{{Name: "app", Image: "app"}},
			Volumes: []corev1.Volume{{Name: contract.SecretVolumePrefix + "mounted", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "mounted-secret"}}}}},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct{ ns, identity string }{{"apps", "mounted"}, {"other", "elsewhere"}, {"apps", "msi"}} {
		mkBinding(t, c, b.ns, b.identity, b.identity, "app")
	}
	eventually(t, 10*time.Second, "the annotation lists what the pod can be served", func() error {
		var p corev1.Pod
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), &p); err != nil {
			return err
		}
		ids, err := binding.Decode(p.Annotations[contract.IdentitiesAnnotation])
		if err != nil {
			return err
		}
		var names []string
		for _, id := range ids {
			names = append(names, id.Namespace+"/"+id.Name)
		}
		sort.Strings(names)
		if got := strings.Join(names, ","); got != "apps/mounted,apps/msi" {
			return fmt.Errorf("annotation lists %s, want apps/mounted,apps/msi", got)
		}
		return nil
	})
}

func TestCountAssignments(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	obj := func(status string, age time.Duration) aadv1.AzureAssignedIdentity {
		return aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now.Add(-age))},
			Status: aadv1.AzureAssignedIdentityStatus{Status: status}}
	}
	got := countAssignments([]aadv1.AzureAssignedIdentity{
		obj(aadv1.AssignedIDCreated, time.Minute),
		obj(aadv1.AssignedIDCreated, 5*time.Minute),
		obj(aadv1.AssignedIDCreated, 59*time.Minute),
		obj(aadv1.AssignedIDAssigned, 2*time.Hour),
		obj(aadv1.AssignedIDUnassigned, time.Hour),
		obj("", 0), // MIC's object before it set a status, or one written by hand
		obj("Bogus", 3*time.Hour),
	}, now)
	want := map[string]int{"Created/under_5m": 1, "Created/5m_to_1h": 2, "Assigned/over_1h": 1, "Unassigned/over_1h": 1,
		"other/under_5m": 1, "other/over_1h": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("countAssignments = %v, want %v", got, want)
	}
}
