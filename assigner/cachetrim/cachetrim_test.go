package cachetrim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/guard"
	"github.com/podidentity/podidentity/assigner/podaudit"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
)

// goldenCase is what the assigner's decisions need from one of the injector's golden files: the pod before
// admission (as an un-injected pod looks) and after (as the webhook leaves it), with its namespace's objects.
type goldenCase struct {
	name       string
	pods       []corev1.Pod
	identities []aadv1.AzureIdentity
	bindings   []aadv1.AzureIdentityBinding
	exceptions []aadv1.AzurePodIdentityException
}

func loadGolden(t *testing.T) []goldenCase {
	t.Helper()
	ins, err := filepath.Glob("../../webhook/testdata/golden/*.in.yaml")
	if err != nil || len(ins) < 20 {
		t.Fatalf("the injector's golden files: %d found (%v)", len(ins), err)
	}
	var out []goldenCase
	for _, in := range ins {
		var c struct {
			Pod        corev1.Pod                        `json:"pod"`
			Identities []aadv1.AzureIdentity             `json:"identities"`
			Bindings   []aadv1.AzureIdentityBinding      `json:"bindings"`
			Exceptions []aadv1.AzurePodIdentityException `json:"exceptions"`
		}
		readYAML(t, in, &c)
		gc := goldenCase{name: strings.TrimSuffix(filepath.Base(in), ".in.yaml"), identities: c.Identities, bindings: c.Bindings, exceptions: c.Exceptions}
		gc.pods = append(gc.pods, c.Pod)
		var res struct {
			Pod *corev1.Pod `json:"pod"`
		}
		readYAML(t, strings.TrimSuffix(in, ".in.yaml")+".out.yaml", &res)
		if res.Pod != nil {
			gc.pods = append(gc.pods, *res.Pod)
		}
		out = append(out, gc)
	}
	return out
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// variants turns a golden pod into the states the assigner meets: scheduled on a scale-set node, running or
// finished, with the bulk a real pod carries (managed fields, kubectl's copy, statuses).
func variants(p corev1.Pod, node string) []corev1.Pod {
	p.Spec.NodeName = node
	if p.Name == "" {
		p.Name = p.GenerateName + "x"
	}
	p.UID = "uid-" + "x"
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate}}
	p.Annotations = withAnnotation(p.Annotations, LastAppliedAnnotation, `{"kind":"Pod"}`)
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", ContainerID: "containerd://abc"}}
	running, done := p, p
	running.Status.Phase = corev1.PodRunning
	done.Status.Phase = corev1.PodSucceeded
	agent := running // a trusted service account (guard mode)
	agent.Spec.ServiceAccountName = "agent"
	windows := running // Windows pods get no attachment, by node selector or by OS
	windows.Spec.NodeSelector = map[string]string{corev1.LabelOSStable: "windows"}
	windowsOS := running
	windowsOS.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
	return []corev1.Pod{running, done, agent, windows, windowsOS}
}

func withAnnotation(in map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for key, val := range in {
		out[key] = val
	}
	return out
}

// trimmedPods trims in with one Trimmer, as the cache does: equal parts are shared.
func trimmedPods(in []corev1.Pod) []corev1.Pod {
	t := &Trimmer{}
	out := make([]corev1.Pod, len(in))
	for i := range in {
		out[i] = *t.Pod(&in[i])
	}
	return out
}

func trimmedNodes(in []corev1.Node) []corev1.Node {
	t := &Trimmer{}
	out := make([]corev1.Node, len(in))
	for i := range in {
		out[i] = *t.Node(&in[i])
	}
	return out
}

// TestDecisionsAgree: every decision the assigner takes from cached pods and nodes (desired state, pods left
// un-injected, the pod audit, guard mode's audit and its CNI-mode view, the identities annotation's content) is
// the same on full objects and on trimmed ones, for every pod shape of the injector's golden files, before and
// after injection, running and finished, in opted-in and other namespaces, with guard mode on and off.
func TestDecisionsAgree(t *testing.T) {
	const label = "podidentity.io/injection"
	pool := &desired.Pool{Key: "agentpool", Value: "identity"}
	nodes := []corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "pool-0", Labels: map[string]string{"agentpool": "identity"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
			Spec:   corev1.NodeSpec{ProviderID: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/0"},
			Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"registry/app:1"}, SizeBytes: 1}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other-0", Labels: map[string]string{"agentpool": "other"}},
			Spec: corev1.NodeSpec{ProviderID: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/other/virtualMachines/0"}},
	}
	checked := 0
	for _, gc := range loadGolden(t) {
		var pods []corev1.Pod
		for _, p := range gc.pods {
			for _, node := range []string{"pool-0", "other-0"} {
				pods = append(pods, variants(p, node)...)
			}
		}
		trimmed, trimmedN := trimmedPods(pods), trimmedNodes(nodes)
		// The assigner's passes read the cache's own pods and nodes, without deep copies: no decision may
		// write to them (checked at the end of the case).
		untouched := snapshot(t, trimmed, trimmedN)
		for _, optedIn := range []bool{true, false} {
			nsLabels := map[string]map[string]string{"shop": {}}
			if optedIn {
				nsLabels["shop"][label] = "enabled"
			}
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: nsLabels["shop"]}}
			for _, p := range []*desired.Pool{nil, pool} {
				for _, attach := range []bool{false, true} {
					in := desired.Input{Nodes: nodes, Bindings: gc.bindings, Identities: gc.identities, Exceptions: gc.exceptions,
						Pool: p, NamespaceLabels: nsLabels, Injection: desired.Injection{Label: label, AttachUninjected: attach}}
					full, trim := in, in
					full.Pods, trim.Pods, trim.Nodes = pods, trimmed, trimmedN
					agree(t, gc.name+"/desired.Compute", desired.Compute(full), desired.Compute(trim))
					agree(t, gc.name+"/desired.NotInjected", desired.NotInjected(full), desired.NotInjected(trim))
				}
			}
			audit := podaudit.Input{NamespaceLabels: nsLabels, Bindings: gc.bindings, Identities: gc.identities, Exceptions: gc.exceptions,
				Injection: desired.Injection{Label: label}}
			fullAudit, trimAudit := audit, audit
			fullAudit.Pods, trimAudit.Pods = pods, trimmed
			agree(t, gc.name+"/podaudit.Audit", podaudit.Audit(fullAudit), podaudit.Audit(trimAudit))

			rules := guard.Rules{Pool: pool, InjectionLabel: label, TrustedServiceAccounts: []string{"shop/agent"},
				CNI: &imdspolicy.Policy{InjectionLabel: label, SidecarImage: sidecarImage(pods), Scope: imdspolicy.ScopeAll}}
			assigned := []aadv1.AzureAssignedIdentity{{Spec: aadv1.AzureAssignedIdentitySpec{NodeName: "other-0",
				AzureIdentityRef: &aadv1.AzureIdentity{Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI}}}}}
			gin := guard.Input{Namespaces: []corev1.Namespace{*ns}, Assigned: assigned, Exceptions: gc.exceptions}
			fullGuard, trimGuard := gin, gin
			fullGuard.Pods, fullGuard.Nodes = pods, nodes
			trimGuard.Pods, trimGuard.Nodes = trimmed, trimmedN
			agree(t, gc.name+"/guard.Audit", guard.Audit(fullGuard, rules), guard.Audit(trimGuard, rules))
			for i := range pods {
				agree(t, gc.name+"/guard.Why", rules.Why(&pods[i], nsLabels["shop"]), rules.Why(&trimmed[i], nsLabels["shop"]))
				agree(t, gc.name+"/imdspolicy.Decide", imdspolicy.Decide(*rules.CNI, &pods[i], ns, gc.exceptions), imdspolicy.Decide(*rules.CNI, &trimmed[i], ns, gc.exceptions))
				checked++
			}
		}
		// What the annotations reconciler writes: the resolved identities the pod's sidecar can serve.
		for i := range pods {
			_, exFull := binding.Excepted(&pods[i], gc.exceptions)
			_, exTrim := binding.Excepted(&trimmed[i], gc.exceptions)
			agree(t, gc.name+"/binding.Excepted", exFull, exTrim)
			idsFull, _ := binding.Resolve(&pods[i], gc.bindings, gc.identities, binding.Options{})
			idsTrim, _ := binding.Resolve(&trimmed[i], gc.bindings, gc.identities, binding.Options{})
			agree(t, gc.name+"/binding.Servable", binding.Servable(&pods[i], idsFull), binding.Servable(&trimmed[i], idsTrim))
		}
		if snapshot(t, trimmed, trimmedN) != untouched {
			t.Errorf("%s: a decision wrote to the trimmed pods or nodes it was given", gc.name)
		}
	}
	if checked < 200 {
		t.Fatalf("only %d pod decisions compared: the golden corpus did not load as expected", checked)
	}
}

func sidecarImage(pods []corev1.Pod) string {
	for i := range pods {
		if c := imdspolicy.SidecarContainer(&pods[i]); c != nil {
			return c.Image
		}
	}
	return "podidentity-sidecar"
}

func agree(t *testing.T, what string, full, trimmed any) {
	t.Helper()
	if !reflect.DeepEqual(full, trimmed) {
		f, _ := json.Marshal(full)
		tr, _ := json.Marshal(trimmed)
		t.Errorf("%s differs on the trimmed objects:\nfull:    %s\ntrimmed: %s", what, f, tr)
	}
}

// TestTrimDropsTheBulk: what a trimmed object no longer holds, and that the original is left alone (the
// informer hands the transform its own decoded copy, but a shared value must not be changed under a reader).
func TestTrimDropsTheBulk(t *testing.T) {
	var c struct {
		Pod corev1.Pod `json:"pod"`
	}
	readYAML(t, "../../webhook/testdata/golden/deployment-pod.out.yaml", &c)
	p := variants(c.Pod, "n")[0]
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	before, _ := json.Marshal(p)
	got := (&Trimmer{}).Pod(&p)
	after, _ := json.Marshal(p)
	if string(before) != string(after) {
		t.Fatal("Pod changed its input")
	}
	if got.ManagedFields != nil || got.Annotations[LastAppliedAnnotation] != "" {
		t.Errorf("managed fields or kubectl's copy kept: %v %v", got.ManagedFields, got.Annotations)
	}
	for _, v := range got.Spec.Volumes {
		if v.Secret == nil {
			t.Errorf("volume %s kept, only Secret volumes are read", v.Name)
		}
	}
	kept := 0
	for _, ctr := range append(got.Spec.InitContainers, got.Spec.Containers...) {
		if ctr.Name != contract.InitContainerName && ctr.Name != contract.SidecarContainerName {
			t.Errorf("container %s kept: only podidentity's own are read", ctr.Name)
		}
		if len(ctr.Env) > 0 || len(ctr.Args) > 0 || ctr.SecurityContext != nil || len(ctr.VolumeMounts) > 0 {
			t.Errorf("container %s kept more than name, image and restart policy", ctr.Name)
		}
		kept++
	}
	if kept != 2 {
		t.Errorf("%d containers kept, want podidentity-init and the sidecar", kept)
	}
	if len(got.Status.ContainerStatuses) != 0 || got.Status.Phase != corev1.PodRunning {
		t.Errorf("status %+v, want the phase only", got.Status)
	}
	small, _ := json.Marshal(got)
	t.Logf("golden deployment pod: %d bytes as JSON, %d trimmed", len(before), len(small))
	if len(small)*2 > len(before) {
		t.Errorf("trimmed pod %d bytes, full %d: expected well under half", len(small), len(before))
	}

	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec:   corev1.NodeSpec{ProviderID: "azure:///x"},
		Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"i"}}}, Conditions: []corev1.NodeCondition{{Type: "Ready"}}}}
	tn := (&Trimmer{}).Node(&n)
	if tn.ManagedFields != nil || tn.Status.Images != nil || tn.Status.Conditions != nil || tn.Spec.ProviderID != "azure:///x" {
		t.Errorf("trimmed node %+v", tn)
	}
}

// TestTransformLeavesOtherKinds: the informer may hand a tombstone; it loses only its managed fields.
func TestTransformLeavesOtherKinds(t *testing.T) {
	tr := transform((&Trimmer{}).Pod)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"k": "v"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "m"}}}}
	out, err := tr(ns)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Namespace)
	if got.ManagedFields != nil || got.Labels["k"] != "v" {
		t.Errorf("got %+v", got.ObjectMeta)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "app", Image: "registry/app:1"}, {Name: contract.SidecarContainerName, Image: "sidecar:1", Env: []corev1.EnvVar{{Name: "X"}}}}}}
	out, err = tr(pod)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.(*corev1.Pod); got.Name != "p" || len(got.Spec.Containers) != 1 || got.Spec.Containers[0].Image != "sidecar:1" || len(got.Spec.Containers[0].Env) != 0 {
		t.Errorf("pod not trimmed: %+v", got.Spec.Containers)
	}
}

// BenchmarkCachedBytes reports what one cached object keeps on the heap, full (as decoded, managedFields
// stripped as the other kinds are) and trimmed (as the assigner's cache holds it): the injector's golden
// Deployment pod, running on a node, with the labels and owner a Deployment gives its pods; and its
// AzureAssignedIdentity as the API server returns it. Each of b.N rounds decodes and keeps sizeObjects
// objects with distinct names and uids, as an informer does.
//
//	go test ./assigner/cachetrim/ -run '^$' -bench BenchmarkCachedBytes -benchtime 3x
func BenchmarkCachedBytes(b *testing.B) {
	const sizeObjects = 10000
	var c struct {
		Pod corev1.Pod `json:"pod"`
	}
	raw, err := os.ReadFile("../../webhook/testdata/golden/deployment-pod.out.yaml")
	if err != nil {
		b.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		b.Fatal(err)
	}
	pod := variants(c.Pod, "aks-pool-12345678-vmss000004")[0]
	pod.Namespace, pod.GenerateName = "orders", "orders-5d8f7b9c4-"
	pod.Labels = map[string]string{aadv1.PodLabelBinding: "orders", "app": "orders", "pod-template-hash": "5d8f7b9c4"}
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "orders-5d8f7b9c4", UID: "6a0e2c55-1111-4d0b-8d7e-1f0e1b2c3d4e"}}
	id := aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "orders", Name: "orders", Labels: map[string]string{"team": "orders"}},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "00000000-1111-2222-3333-444444444444",
			ResourceID: "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders"}}
	bd := aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "orders", Name: "orders"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "orders", Selector: "orders"}}
	a := desired.Assignment{Namespace: "orders", Pod: "orders-5d8f7b9c4-x", PodNamespace: "orders", NodeName: pod.Spec.NodeName, Identity: &id, Binding: &bd}
	aai := a.Object()
	aai.Annotations = map[string]string{desired.ResourceAnnotation: "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mc_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool-12345678-vmss"}
	aai.Finalizers = []string{"podidentity.io/assigner"}
	aai.Status.Status = aadv1.AssignedIDAssigned
	aai.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "podidentity-assigner", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1",
		FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{"f:annotations":{".":{},"f:podidentity.io/arm-resource":{}},"f:finalizers":{".":{},"v:\"podidentity.io/assigner\"":{}}},"f:spec":{".":{},"f:azureBindingRef":{".":{},"f:apiVersion":{},"f:kind":{},"f:metadata":{".":{},"f:name":{},"f:namespace":{}},"f:spec":{".":{},"f:azureIdentity":{},"f:selector":{}}},"f:azureIdentityRef":{".":{},"f:apiVersion":{},"f:kind":{},"f:metadata":{".":{},"f:labels":{".":{},"f:team":{}},"f:name":{},"f:namespace":{}},"f:spec":{".":{},"f:clientID":{},"f:resourceID":{},"f:type":{}}},"f:nodename":{},"f:pod":{},"f:podNamespace":{}},"f:status":{".":{},"f:availableReplicas":{},"f:status":{}}}`)}}
	podJSON, _ := json.Marshal(pod)
	aaiJSON, _ := json.Marshal(aai)
	strip := func(o metav1.Object) { o.SetManagedFields(nil) }
	measure := func(b *testing.B, keep func(i int) any) float64 {
		b.Helper()
		held := make([]any, sizeObjects)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range held {
			held[i] = keep(i)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(held)
		return float64(after.HeapAlloc-before.HeapAlloc) / sizeObjects
	}
	decode := func(raw []byte, i int, into any) {
		s := strings.Replace(string(raw), `"uid":"uid-x"`, fmt.Sprintf(`"uid":"uid-%08d"`, i), 1)
		s = strings.Replace(s, `"name":"`, fmt.Sprintf(`"name":"n%06d-`, i), 1)
		if err := json.Unmarshal([]byte(s), into); err != nil {
			b.Fatal(err)
		}
	}
	var fullPod, trimPod, fullAAI, trimAAI float64
	for range b.N {
		t := &Trimmer{} // one cache's, as the informers share it
		fullPod = measure(b, func(i int) any { var p corev1.Pod; decode(podJSON, i, &p); strip(&p); return &p })
		trimPod = measure(b, func(i int) any { var p corev1.Pod; decode(podJSON, i, &p); return t.Pod(&p) })
		fullAAI = measure(b, func(i int) any { var o aadv1.AzureAssignedIdentity; decode(aaiJSON, i, &o); strip(&o); return &o })
		trimAAI = measure(b, func(i int) any {
			var o aadv1.AzureAssignedIdentity
			decode(aaiJSON, i, &o)
			return t.AssignedIdentity(&o)
		})
	}
	b.ReportMetric(fullPod, "full-B/pod")
	b.ReportMetric(trimPod, "trimmed-B/pod")
	b.ReportMetric(fullAAI, "full-B/assignment")
	b.ReportMetric(trimAAI, "trimmed-B/assignment")
}

// TestTrimmerShares: objects that repeat a part hold one copy of it, equal to what each would hold alone; a part
// that differs is not shared; a reader's deep copy is its own.
func TestTrimmerShares(t *testing.T) {
	var c struct {
		Pod corev1.Pod `json:"pod"`
	}
	readYAML(t, "../../webhook/testdata/golden/deployment-pod.out.yaml", &c)
	base := variants(c.Pod, "n")[0]
	base.Labels = map[string]string{aadv1.PodLabelBinding: "orders", "pod-template-hash": "5d8f7b9c4"}
	base.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "orders-5d8f7b9c4", UID: "u1"}}
	base.Spec.Volumes = append(base.Spec.Volumes, corev1.Volume{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sp"}}})
	second := *base.DeepCopy()
	second.Name, second.UID = "orders-5d8f7b9c4-y", "uid-y"
	other := *base.DeepCopy() // another ReplicaSet: its own labels and owner
	other.Name, other.UID = "orders-7f6d5c4b3-z", "uid-z"
	other.Labels["pod-template-hash"] = "7f6d5c4b3"
	other.OwnerReferences[0].Name, other.OwnerReferences[0].UID = "orders-7f6d5c4b3", "u2"

	tr := &Trimmer{}
	a, b, o := tr.Pod(&base), tr.Pod(&second), tr.Pod(&other)
	for _, p := range []struct {
		got  *corev1.Pod
		from corev1.Pod
	}{{a, base}, {b, second}, {o, other}} {
		if alone := (&Trimmer{}).Pod(&p.from); !reflect.DeepEqual(p.got, alone) {
			t.Errorf("%s: shared trim differs from its own:\n%+v\n%+v", p.from.Name, p.got, alone)
		}
	}
	same := func(what string, x, y any, want bool) {
		t.Helper()
		if got := reflect.ValueOf(x).UnsafePointer() == reflect.ValueOf(y).UnsafePointer(); got != want {
			t.Errorf("%s shared: %v, want %v", what, got, want)
		}
	}
	same("labels of one ReplicaSet", a.Labels, b.Labels, true)
	same("annotations of one ReplicaSet", a.Annotations, b.Annotations, true)
	same("owners of one ReplicaSet", a.OwnerReferences, b.OwnerReferences, true)
	same("podidentity containers", a.Spec.InitContainers, o.Spec.InitContainers, true)
	same("Secret volumes", a.Spec.Volumes, o.Spec.Volumes, true)
	same("labels of two ReplicaSets", a.Labels, o.Labels, false)
	same("owners of two ReplicaSets", a.OwnerReferences, o.OwnerReferences, false)
	if len(a.Spec.InitContainers) != 2 || len(a.Spec.Volumes) != 1 {
		t.Fatalf("trimmed pod keeps %d containers and %d volumes, want 2 and 1", len(a.Spec.InitContainers), len(a.Spec.Volumes))
	}

	// A reader's copy (what the cache's Get and List return) shares nothing with the cache.
	cp := a.DeepCopy()
	cp.Labels["pod-template-hash"] = "changed"
	cp.Spec.InitContainers[0].Image = "changed"
	if b.Labels["pod-template-hash"] != "5d8f7b9c4" || b.Spec.InitContainers[0].Image == "changed" {
		t.Error("a deep copy of a trimmed pod writes through to another cached pod")
	}

	// Keys cannot collide: values are written with their lengths.
	m1 := tr.sharedMap(&tr.labels, map[string]string{"a": "bc"}, "")
	m2 := tr.sharedMap(&tr.labels, map[string]string{"ab": "c"}, "")
	if reflect.DeepEqual(m1, m2) {
		t.Errorf("two different maps shared one copy: %v %v", m1, m2)
	}

	// Identities and bindings referenced by many AzureAssignedIdentities are held once; another identity is not.
	aai := func(pod, clientID string) *aadv1.AzureAssignedIdentity {
		return &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "orders", Name: pod + "-orders", Finalizers: []string{"podidentity.io/assigner"}},
			Spec: aadv1.AzureAssignedIdentitySpec{Pod: pod, PodNamespace: "orders",
				AzureIdentityRef: &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "orders", Name: "orders"}, Spec: aadv1.AzureIdentitySpec{ClientID: clientID, ResourceID: "/r"}},
				AzureBindingRef:  &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "orders", Name: "orders"}}}}
	}
	x, y, z := tr.AssignedIdentity(aai("p1", "c1")), tr.AssignedIdentity(aai("p2", "c1")), tr.AssignedIdentity(aai("p3", "c2"))
	same("identity of one client id", x.Spec.AzureIdentityRef, y.Spec.AzureIdentityRef, true)
	same("identity after its client id changed", x.Spec.AzureIdentityRef, z.Spec.AzureIdentityRef, false)
	same("binding", x.Spec.AzureBindingRef, z.Spec.AzureBindingRef, true)
	same("finalizers", x.Finalizers, z.Finalizers, true)
	if z.Spec.AzureIdentityRef.Spec.ClientID != "c2" || x.Spec.AzureIdentityRef.Spec.ClientID != "c1" {
		t.Errorf("client ids %q %q, want c1 c2", x.Spec.AzureIdentityRef.Spec.ClientID, z.Spec.AzureIdentityRef.Spec.ClientID)
	}
}

// TestShareCollision: two different values with the same hash are never given one copy.
func TestShareCollision(t *testing.T) {
	tr := &Trimmer{}
	var table map[uint64][]string
	a := share(tr, &table, 42, []string{"a"})
	if got := share(tr, &table, 42, []string{"b"}); !reflect.DeepEqual(got, []string{"b"}) {
		t.Errorf("a value whose hash collides with another's came back as %v", got)
	}
	if got := share(tr, &table, 42, []string{"a"}); reflect.ValueOf(got).UnsafePointer() != reflect.ValueOf(a).UnsafePointer() {
		t.Error("the first value of a hash is not shared after a collision")
	}
}

// TestTrimmerBounded: a table of parts that each object holds alone (a StatefulSet pod's own labels) starts over
// when full instead of growing with the cluster, and keeps giving the right values.
func TestTrimmerBounded(t *testing.T) {
	tr := &Trimmer{}
	for i := range maxShared + 10 {
		want := map[string]string{"statefulset.kubernetes.io/pod-name": fmt.Sprintf("db-%d", i)}
		if got := tr.sharedMap(&tr.labels, want, ""); !reflect.DeepEqual(got, want) {
			t.Fatalf("map %d: got %v, want %v", i, got, want)
		}
	}
	if n := len(tr.labels); n > maxShared || n == 0 {
		t.Errorf("table holds %d maps, want 1 to %d", n, maxShared)
	}
}

// TestTrimmerConcurrent: the informers of pods, nodes and AzureAssignedIdentities trim at the same time (run
// with -race).
func TestTrimmerConcurrent(t *testing.T) {
	tr := &Trimmer{}
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 500 {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint(i), Labels: map[string]string{"app": fmt.Sprint(i % 7), "g": fmt.Sprint(g % 2)}}}
				if got := tr.Pod(p); got.Labels["app"] != fmt.Sprint(i%7) || got.Labels["g"] != fmt.Sprint(g%2) {
					t.Errorf("pod %d of %d: labels %v", i, g, got.Labels)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}

// snapshot is pods and nodes written out in full, shared parts included.
func snapshot(t *testing.T, pods []corev1.Pod, nodes []corev1.Node) string {
	t.Helper()
	b, err := json.Marshal([]any{pods, nodes})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
