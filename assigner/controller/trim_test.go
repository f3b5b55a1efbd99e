package controller

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/cachetrim"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/guard"
)

// serverFields is the managedFields entry the API server records for an AzureAssignedIdentity the assigner
// wrote: every field it set.
const serverFields = `{"f:metadata":{"f:annotations":{".":{},"f:podidentity.io/arm-resource":{}},"f:finalizers":{".":{},"v:\"podidentity.io/assigner\"":{}}},` +
	`"f:spec":{".":{},"f:azureBindingRef":{".":{},"f:apiVersion":{},"f:kind":{},"f:metadata":{".":{},"f:labels":{".":{},"f:team":{}},"f:name":{},"f:namespace":{}},` +
	`"f:spec":{".":{},"f:azureIdentity":{},"f:selector":{}}},"f:azureIdentityRef":{".":{},"f:apiVersion":{},"f:kind":{},"f:metadata":{".":{},"f:annotations":{".":{},"f:note":{}},` +
	`"f:labels":{".":{},"f:team":{}},"f:name":{},"f:namespace":{}},"f:spec":{".":{},"f:adResourceID":{},"f:auxiliaryTenantIDs":{},"f:clientID":{},"f:resourceID":{},"f:tenantID":{},"f:type":{}}},` +
	`"f:nodename":{},"f:pod":{},"f:podNamespace":{}},"f:status":{".":{},"f:availableReplicas":{},"f:status":{}}}`

// The AzureAssignedIdentity objects enter the assigner's cache trimmed (cachetrim.Trimmer.AssignedIdentity). These
// tests take every decision that reads them on full objects and on trimmed ones, and check that each field the
// trim keeps is read by at least one of them: a field dropped by mistake makes a decision differ.

// trimCorpus is a resource's objects in the states a pass meets, embedding full copies of their identity and
// binding (metadata, a service principal's tenant and secret, the selector), with the server's bulk.
func trimCorpus() (want desired.State, objs []aadv1.AzureAssignedIdentity, pods []corev1.Pod, identities []aadv1.AzureIdentity, bindings []aadv1.AzureIdentityBinding) {
	rich := func(a desired.Assignment) desired.Assignment {
		id, b := a.Identity.DeepCopy(), a.Binding.DeepCopy()
		id.Labels, id.Annotations = map[string]string{"team": "orders"}, map[string]string{"note": "kept by GitOps"}
		id.Spec.TenantID, id.Spec.ADResourceID, id.Spec.AuxiliaryTenantIDs = "tenant", "https://management.azure.com/", []string{"aux"}
		if id.Spec.Type != aadv1.UserAssignedMSI {
			id.Spec.ClientPassword = corev1.SecretReference{Namespace: "apps", Name: "sp-secret"}
		}
		b.Spec.AzureIdentity, b.Spec.Selector = id.Name, id.Name+"-selector"
		b.Labels = map[string]string{"team": "orders"}
		a.Identity, a.Binding = id, b
		a.Resource = testResource()
		return a
	}
	msi, sp, b := rich(planAssignment("p1", "msi", true)), rich(planAssignment("p2", "sp", false)), rich(planAssignment("p3", "b", true))
	other := rich(planAssignment("p4", "msi", true))
	want = wantOf(msi, sp, b, other)
	now := time.Now()
	server := func(o *aadv1.AzureAssignedIdentity, status string, age time.Duration) aadv1.AzureAssignedIdentity {
		o.Finalizers = []string{Finalizer}
		o.Status.Status = status
		o.Status.AvailableReplicas = 1
		o.Spec.Metadata = &runtime.RawExtension{Raw: []byte(`{"creationTimestamp":null}`)}
		o.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "podidentity-assigner", Operation: metav1.ManagedFieldsOperationUpdate,
			APIVersion: aadv1.GroupVersion.String(), FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(serverFields)}}
		o.CreationTimestamp = metav1.Time{Time: now.Add(-age)}
		o.UID, o.ResourceVersion = "uid-"+k8stypes.UID(o.Name), "7"
		if o.Annotations == nil {
			o.Annotations = map[string]string{}
		}
		o.Annotations[cachetrim.LastAppliedAnnotation] = `{"kind":"AzureAssignedIdentity"}`
		return *o
	}
	withResource := func(a desired.Assignment) *aadv1.AzureAssignedIdentity {
		o := a.Object()
		if o.Annotations == nil {
			o.Annotations = map[string]string{}
		}
		o.Annotations[desired.ResourceAnnotation] = testResource().ID()
		return o
	}
	// Wanted and as wanted.
	objs = append(objs, server(withResource(msi), aadv1.AssignedIDAssigned, 2*time.Hour))
	// Wanted, created, with the reason it waits.
	waiting := withResource(sp)
	setNotice(waiting, notice{Reason: "Throttled", Message: "throttled"}) // as the "problem" view says
	objs = append(objs, server(waiting, aadv1.AssignedIDCreated, 10*time.Minute))
	// Wanted, but saying another identity, client id, binding or node: updated.
	stale := withResource(b)
	stale.Spec.AzureIdentityRef.Spec.ClientID = "old-client"
	objs = append(objs, server(stale, aadv1.AssignedIDAssigned, time.Minute))
	// Wanted, being deleted.
	deleting := withResource(other)
	deleting.DeletionTimestamp = &metav1.Time{Time: now}
	objs = append(objs, server(deleting, aadv1.AssignedIDAssigned, time.Minute))
	// Unwanted: their pods run on their nodes, their identity or binding is gone (grace), or not.
	for i, c := range []struct {
		pod, id, binding string
		typ              aadv1.IdentityType
		status           string
		node             string
	}{
		{"q1", "gone", "gone", aadv1.UserAssignedMSI, aadv1.AssignedIDAssigned, "node-0"},
		{"q2", "msi", "gone-binding", aadv1.UserAssignedMSI, aadv1.AssignedIDAssigned, "node-0"},
		{"q3", "kept", "kept", aadv1.UserAssignedMSI, aadv1.AssignedIDUnassigned, "node-1"},
		{"q4", "sp", "sp", aadv1.ServicePrincipal, aadv1.AssignedIDAssigned, "node-0"},
		{"q5", "detached", "detached", aadv1.UserAssignedMSI, aadv1.AssignedIDUnassigned, "node-0"},
	} {
		a := rich(planAssignment(c.pod, c.id, c.typ == aadv1.UserAssignedMSI))
		a.Binding.Name, a.NodeName = c.binding, c.node
		o := withResource(a)
		objs = append(objs, server(o, c.status, time.Duration(i)*time.Hour))
	}
	// Left by AAD Pod Identity's MIC (no resource annotation): one to adopt, one whose pod still runs without
	// needing it (its identity is left alone), one whose pod is gone (its identity is MIC's to detach).
	for _, c := range []struct{ pod, id string }{{"p1", "msi"}, {"q1", "gone"}, {"z9", "elsewhere"}} {
		a := rich(planAssignment(c.pod, c.id, true))
		mic := micObject("apps", c.pod, "apps", "node-0", a.Identity, aadv1.AssignedIDAssigned)
		if c.pod == "p1" {
			mic.Name = msi.Name
		}
		objs = append(objs, server(mic, aadv1.AssignedIDAssigned, 3*time.Hour))
	}
	for _, p := range []struct{ name, node string }{{"p1", "node-0"}, {"p2", "node-0"}, {"p3", "node-0"}, {"p4", "node-0"}, {"q1", "node-0"}, {"q2", "node-0"}, {"q3", "node-1"}, {"q4", "node-0"}} {
		pods = append(pods, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: p.name, Labels: map[string]string{aadv1.PodLabelBinding: "sel"}},
			Spec: corev1.PodSpec{NodeName: p.node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}})
	}
	kept := rich(planAssignment("q3", "kept", true))
	for _, a := range []desired.Assignment{msi, sp, b, kept} {
		identities = append(identities, *a.Identity)
		bindings = append(bindings, *a.Binding)
	}
	return want, objs, pods, identities, bindings
}

// trimDecisions is every decision taken from a resource's AzureAssignedIdentity objects, as comparable values.
func trimDecisions(t *testing.T, want desired.State, objs []aadv1.AzureAssignedIdentity, pods []corev1.Pod, identities []aadv1.AzureIdentity, bindings []aadv1.AzureIdentityBinding) map[string]any {
	t.Helper()
	out := map[string]any{}
	ptrs := func() []*aadv1.AzureAssignedIdentity {
		cp := make([]aadv1.AzureAssignedIdentity, len(objs))
		for i := range objs {
			cp[i] = *objs[i].DeepCopy()
		}
		var p []*aadv1.AzureAssignedIdentity
		for i := range cp {
			p = append(p, &cp[i])
		}
		return p
	}
	var ours, mic []aadv1.AzureAssignedIdentity
	for i := range objs {
		out["fromMIC/"+objs[i].Name] = fromMIC(&objs[i])
		out["micNode/"+objs[i].Name] = micNode(&objs[i])
		out["identityOf/"+objs[i].Name] = identityOf(&objs[i])
		out["assignedResourceKey/"+objs[i].Name] = assignedResourceKey(&objs[i])
		if fromMIC(&objs[i]) {
			mic = append(mic, objs[i])
		} else {
			ours = append(ours, objs[i])
		}
	}
	attached := azure.ResourceIdentity{UserAssigned: map[string]string{uami("msi"): "", uami("q5-none"): ""}}
	views := map[string]armView{
		"unknown": {},
		"known":   {cur: attached, known: true, goal: azure.Goal{Want: map[string]string{}}},
		"detaching": {cur: azure.ResourceIdentity{UserAssigned: map[string]string{uami("gone"): "", uami("msi"): ""}}, known: true,
			goal: azure.Goal{Want: map[string]string{strings.ToLower(uami("msi")): ""}, Owned: map[string]bool{strings.ToLower(uami("gone")): true}}},
		"problem": {problem: &notice{Reason: "Throttled", Message: "throttled"}},
	}
	for _, managed := range []bool{false, true} {
		m := map[bool]string{false: "/arm", true: "/managed"}[managed]
		for _, recent := range []writes{nil, {"apps/" + objs[1].Name: {status: aadv1.AssignedIDCreated, why: "throttled"}}} {
			have := map[string]*aadv1.AzureAssignedIdentity{}
			for _, p := range ptrs() {
				if !fromMIC(p) {
					have[p.Namespace+"/"+p.Name] = p
				}
			}
			p := planObjects(want, have, recent, managed)
			var updates []string
			for _, u := range p.update {
				updates = append(updates, u.obj.Namespace+"/"+u.obj.Name+">"+u.a.Key())
			}
			out["planObjects"+m+"/"+jsonOf(recent)] = []any{keysOf(p.release), updates, keysOf(p.unassign), assignmentKeys(p.ready), assignmentKeys(p.missing)}
			for name, v := range views {
				var existing []*aadv1.AzureAssignedIdentity
				for _, p := range ptrs() {
					if !fromMIC(p) {
						existing = append(existing, p)
					}
				}
				sp := planStatuses(want, existing, recent, v, managed)
				var set, announce []string
				for _, w := range sp.set {
					set = append(set, w.obj.Namespace+"/"+w.obj.Name+"="+w.status+"/"+w.why.Reason)
				}
				for _, a := range sp.announce {
					announce = append(announce, a.a.Key()+"/"+a.why.Reason)
				}
				out["planStatuses"+m+"/"+name+"/"+jsonOf(recent)] = []any{set, keysOf(sp.release), sp.unattached, announce}
			}
		}
		cur := attached
		out["newGrants"+m] = newGrants(want, ours, &cur, managed)
		out["newGrants/unknown"+m] = newGrants(want, ours, nil, managed)
	}
	out["graceCandidates"] = graceCandidates(ours, want, pods, identities, bindings)
	h := planHandover(mic, want, pods)
	out["planHandover"] = []any{keysOf(h.adopt), keysOf(h.release), h.owned, h.kept}
	out["countAssignments"] = countAssignments(objs, time.Now())
	for i := range objs {
		s := &resourceState{recent: map[string]recentWrite{}}
		k := objs[i].Namespace + "/" + objs[i].Name
		s.wrote(k, aadv1.AssignedIDCreated, "throttled")
		out["forgetSeen/"+k] = s.forgetSeen(k, &objs[i], time.Now())
		// Whose finalizer a write removes (removeFinalizer, takeOver, micOrphans).
		out["finalizers/"+k] = []bool{controllerutil.ContainsFinalizer(&objs[i], Finalizer), controllerutil.ContainsFinalizer(&objs[i], MICFinalizer)}
	}
	nodes := []corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "node-0"}, Spec: corev1.NodeSpec{ProviderID: "azure://" + testResource().ID() + "/virtualMachines/0"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Spec: corev1.NodeSpec{ProviderID: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"}},
	}
	untrusted := append([]corev1.Pod(nil), pods...)
	untrusted = append(untrusted, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "intruder"}, Spec: corev1.PodSpec{NodeName: "node-0"}})
	out["guard.Audit"] = guard.Audit(guard.Input{Nodes: nodes, Pods: untrusted, Assigned: objs}, guard.Rules{InjectionLabel: "podidentity.io/injection"})
	return out
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// trimAll trims in with one Trimmer, as the cache does: equal parts are shared.
func trimAll(in []aadv1.AzureAssignedIdentity) []aadv1.AzureAssignedIdentity {
	t := &cachetrim.Trimmer{}
	out := make([]aadv1.AzureAssignedIdentity, len(in))
	for i := range in {
		out[i] = *t.AssignedIdentity(&in[i])
	}
	return out
}

// TestDecisionsAgreeOnAssignedIdentities: every decision that reads AzureAssignedIdentity objects (what a pass
// creates, updates, marks Unassigned, writes a status to or lets go; grace holds; MIC's handover; the opt-in
// re-read; the metrics; the events that bring a resource back; guard mode's audit) is the same on full objects
// and on the cache's trimmed copies; and a trim that dropped any one more field makes at least one differ.
func TestDecisionsAgreeOnAssignedIdentities(t *testing.T) {
	want, objs, pods, identities, bindings := trimCorpus()
	before := jsonOf(objs)
	full := trimDecisions(t, want, objs, pods, identities, bindings)
	trimmed := trimDecisions(t, want, trimAll(objs), pods, identities, bindings)
	if jsonOf(objs) != before {
		t.Fatal("cachetrim.Trimmer.AssignedIdentity changed its input")
	}
	for _, k := range sortedKeys(full) {
		if !reflect.DeepEqual(full[k], trimmed[k]) {
			t.Errorf("%s differs on the trimmed objects:\nfull:    %s\ntrimmed: %s", k, jsonOf(full[k]), jsonOf(trimmed[k]))
		}
	}
	// The trim keeps only fields that some decision reads: dropping any one of them shows.
	drops := map[string]func(*aadv1.AzureAssignedIdentity){
		"metadata.namespace":                       func(o *aadv1.AzureAssignedIdentity) { o.Namespace = "" },
		"metadata.name":                            func(o *aadv1.AzureAssignedIdentity) { o.Name = "" },
		"metadata.creationTimestamp":               func(o *aadv1.AzureAssignedIdentity) { o.CreationTimestamp = metav1.Time{} },
		"metadata.deletionTimestamp":               func(o *aadv1.AzureAssignedIdentity) { o.DeletionTimestamp = nil },
		"metadata.finalizers":                      func(o *aadv1.AzureAssignedIdentity) { o.Finalizers = nil },
		"metadata.annotations[resource]":           func(o *aadv1.AzureAssignedIdentity) { delete(o.Annotations, desired.ResourceAnnotation) },
		"metadata.annotations[error]":              func(o *aadv1.AzureAssignedIdentity) { delete(o.Annotations, desired.ErrorAnnotation) },
		"spec.pod":                                 func(o *aadv1.AzureAssignedIdentity) { o.Spec.Pod = "" },
		"spec.podNamespace":                        func(o *aadv1.AzureAssignedIdentity) { o.Spec.PodNamespace = "" },
		"spec.nodename":                            func(o *aadv1.AzureAssignedIdentity) { o.Spec.NodeName = "" },
		"spec.azureIdentityRef":                    func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureIdentityRef = nil },
		"spec.azureIdentityRef.metadata.namespace": func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureIdentityRef.Namespace = "" },
		"spec.azureIdentityRef.metadata.name":      func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureIdentityRef.Name = "" },
		"spec.azureIdentityRef.spec.type":          func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureIdentityRef.Spec.Type = aadv1.UserAssignedMSI },
		"spec.azureIdentityRef.spec.resourceID":    func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureIdentityRef.Spec.ResourceID = "" },
		"spec.azureIdentityRef.spec.clientID":      func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureIdentityRef.Spec.ClientID = "" },
		"spec.azureBindingRef":                     func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureBindingRef = nil },
		"spec.azureBindingRef.metadata.namespace":  func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureBindingRef.Namespace = "" },
		"spec.azureBindingRef.metadata.name":       func(o *aadv1.AzureAssignedIdentity) { o.Spec.AzureBindingRef.Name = "" },
		"status.status":                            func(o *aadv1.AzureAssignedIdentity) { o.Status.Status = "" },
	}
	for _, field := range sortedKeys(drops) {
		less := trimAll(objs)
		for i := range less {
			drops[field](&less[i])
		}
		if reflect.DeepEqual(full, trimDecisions(t, want, less, pods, identities, bindings)) {
			t.Errorf("dropping %s from the trimmed objects changes no decision: either nothing reads it (drop it from cachetrim.Trimmer.AssignedIdentity) or the corpus misses the case that does", field)
		}
	}
	// And what the trim drops is the bulk.
	f, tr := jsonOf(objs), jsonOf(trimAll(objs))
	t.Logf("corpus: %d bytes as JSON, %d trimmed", len(f), len(tr))
	if len(tr)*2 > len(f) {
		t.Errorf("trimmed objects %d bytes, full %d: expected well under half", len(tr), len(f))
	}
}
