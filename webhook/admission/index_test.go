package admission

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	jsonpatch "gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	sigsjson "sigs.k8s.io/json"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/webhook/inject"
)

const testRID = "/subscriptions/1111/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"

// randomCluster makes a cluster whose bindings, identities and exceptions exercise every rule of
// binding.Resolve and binding.Excepted: several namespaces, selectors differing in case or by a suffix,
// bindings naming missing or empty identities, every identity type with valid and invalid specs, the
// namespaced annotation, service principals with their secret in and out of the pod's namespace, weights
// with ties, exceptions whose values differ in case.
func randomCluster(r *rand.Rand) clusterObjects {
	namespaces := []string{"shop", "shared", "other"}
	selectors := []string{"orders", "Orders", "orders2", "", "web"}
	names := []string{"a", "b", "orders-mi", "sp"}
	pick := func(s []string) string { return s[r.IntN(len(s))] }
	var c clusterObjects
	for _, ns := range namespaces {
		c.Namespaces = append(c.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}})
	}
	seen := map[string]bool{}
	for range r.IntN(10) {
		ns, name := pick(namespaces), pick(names)
		if seen[ns+"/"+name] {
			continue
		}
		seen[ns+"/"+name] = true
		id := aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "cid-" + ns + "-" + name, ResourceID: testRID + name}}
		switch r.IntN(6) {
		case 0:
			id.Annotations = map[string]string{aadv1.BehaviorAnnotation: aadv1.BehaviorNamespaced}
		case 1:
			id.Annotations = map[string]string{aadv1.BehaviorAnnotation: "NameSpaced"}
		}
		switch r.IntN(7) {
		case 0:
			id.Spec.ResourceID = "/subscriptions/1111/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
		case 1, 2:
			id.Spec = aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "sp-" + ns + "-" + name, TenantID: "t",
				ClientPassword: corev1.SecretReference{Name: "secret-" + name, Namespace: pick([]string{"", "", "shop", "other"})}}
		case 3:
			id.Spec.Type = 9
		}
		c.Identities = append(c.Identities, id)
	}
	for i := range r.IntN(8) {
		ns, sel := pick(namespaces), pick(selectors)
		if r.IntN(2) == 0 {
			ns, sel = "shop", "orders"
		}
		identity := pick(append([]string{"", "missing"}, names...))
		if r.IntN(3) > 0 { // mostly an identity that exists in the binding's namespace
			for _, id := range c.Identities {
				if id.Namespace == ns {
					identity = id.Name
					break
				}
			}
		}
		c.Bindings = append(c.Bindings, aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("b%d", i)},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: sel, Weight: r.IntN(3)}})
	}
	for i := range r.IntN(3) {
		c.Exceptions = append(c.Exceptions, aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: pick(namespaces), Name: fmt.Sprintf("e%d", i)},
			Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"tier": pick([]string{"batch", "BATCH", "web"})}}})
	}
	return c
}

func randomPod(t testing.TB, r *rand.Rand) (string, []byte) {
	ns := []string{"shop", "shop", "shared", "other"}[r.IntN(4)]
	labels := map[string]string{}
	if sel := []string{"orders", "orders", "Orders", "web", "nothing", ""}[r.IntN(6)]; sel != "" {
		labels[aadv1.PodLabelBinding] = sel
	}
	if r.IntN(4) == 0 {
		labels["tier"] = "Batch"
	}
	objNS := ns
	if r.IntN(4) == 0 {
		objNS = "" // generateName through the namespaced endpoint: the request's namespace applies
	}
	raw, err := json.Marshal(&corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "p-", Namespace: objNS, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return ns, raw
}

func testHandler(t testing.TB, reader, live client.Reader, settings inject.Settings) (*Handler, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return &Handler{Reader: reader, Live: live, Settings: settings, Injector: inject.NewInjector(settings),
		AssignerUsername: assigner, Metrics: m, Log: logr.Discard()}, reg
}

// outcome is everything an admission answers, plus the live reads it made.
type outcome struct {
	Allowed   bool
	Message   string
	Patch     string
	Warnings  []string
	LiveReads map[string]float64
}

func admit(t testing.TB, h *Handler, reg *prometheus.Registry, ns string, raw []byte) outcome {
	t.Helper()
	before := liveReads(t, h)
	resp := h.Handle(context.Background(), request(admissionv1.Create, ns, "alice", raw, nil))
	patch, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	o := outcome{Allowed: resp.Allowed, Patch: string(patch), Warnings: resp.Warnings, LiveReads: map[string]float64{}}
	if resp.Result != nil {
		o.Message = resp.Result.Message
	}
	for k, v := range liveReads(t, h) {
		if d := v - before[k]; d != 0 {
			o.LiveReads[k] = d
		}
	}
	return o
}

func liveReads(t testing.TB, h *Handler) map[string]float64 {
	out := map[string]float64{}
	for _, object := range []string{"namespace", "bindings", "exceptions", "bindings-and-exceptions"} {
		for _, changed := range []string{"true", "false"} {
			out[object+"/"+changed] = testutil.ToFloat64(h.Metrics.liveReads.WithLabelValues(object, changed))
		}
	}
	return out
}

// TestIndexedSameAsFullWalk: on controller-runtime's real informer cache, holding random clusters, the
// handler registers its index itself and answers every random pod exactly as the handler that lists every
// binding and identity (as before the index) answers it: same admission, patch, warnings, message, and the
// same live reads. The indexed handler never lists all bindings or identities from the cache.
func TestIndexedSameAsFullWalk(t *testing.T) {
	const clusters, podsPerCluster = 40, 40
	var injectedWithIdentity, unresolved, excepted int
	for seed := range uint64(clusters) {
		r := rand.New(rand.NewPCG(seed, 22))
		objs := randomCluster(r)
		real := newRealCache(t, objs)
		for _, force := range []bool{false, true} {
			settings := inject.DefaultSettings()
			settings.ForceNamespaced = force
			counted := &countingCache{Cache: real}
			indexed, indexedReg := testHandler(t, counted, real, settings)
			walk, walkReg := testHandler(t, real, real, settings)
			walk.fullWalk = true
			for range podsPerCluster {
				ns, raw := randomPod(t, r)
				got, want := admit(t, indexed, indexedReg, ns, raw), admit(t, walk, walkReg, ns, raw)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("seed %d, forceNamespaced %v, pod in %s %s\ncluster %+v\nindexed:   %+v\nfull walk: %+v", seed, force, ns, raw, objs, got, want)
				}
				if got.LiveReads["bindings/false"]+got.LiveReads["bindings-and-exceptions/false"] > 0 {
					unresolved++
				}
				if got.LiveReads["exceptions/false"]+got.LiveReads["bindings-and-exceptions/false"] > 0 {
					excepted++
				}
				if boundIdentities(t, raw, got) > 0 {
					injectedWithIdentity++
				}
			}
			if !indexed.indexed {
				t.Fatal("the handler did not index the real cache")
			}
			if n := counted.fullLists.Load(); n != 0 {
				t.Fatalf("the indexed handler listed all bindings or identities from the cache %d times", n)
			}
		}
	}
	t.Logf("%d admissions: %d injected with an identity, %d unresolved in the cache (live list), %d excepted", clusters*podsPerCluster*2, injectedWithIdentity, unresolved, excepted)
	if injectedWithIdentity < 100 || unresolved < 100 || excepted < 20 {
		t.Errorf("the random clusters exercise too little: %d bound, %d unresolved, %d excepted", injectedWithIdentity, unresolved, excepted)
	}
}

// boundIdentities counts the identities the admission recorded in the pod's annotation.
func boundIdentities(t testing.TB, raw []byte, o outcome) int {
	t.Helper()
	if !o.Allowed || o.Patch == "null" {
		return 0
	}
	var ops []jsonpatch.JsonPatchOperation
	if err := json.Unmarshal([]byte(o.Patch), &ops); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(apply(t, raw, admission.Patched("", ops...)), &pod); err != nil {
		t.Fatal(err)
	}
	ids, err := binding.Decode(pod.Annotations[contract.IdentitiesAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	return len(ids)
}

// TestWithoutIndexListsEverything: a Reader that has no index and cannot take one (a plain client) is listed
// whole, and the pod still gets its identity.
func TestWithoutIndexListsEverything(t *testing.T) {
	h, _ := newHandler(t)
	h.Reader = fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
		&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: "orders-mi", Namespace: "shop"}, Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.UserAssignedMSI, ClientID: "c", ResourceID: testRID + "orders-mi"}},
		&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "orders-mi", Selector: "orders"}},
	).Build()
	raw := podJSON(t, "shop", nil)
	resp := h.Handle(context.Background(), request(admissionv1.Create, "shop", "alice", raw, nil))
	var pod corev1.Pod
	if err := json.Unmarshal(apply(t, raw, resp), &pod); err != nil {
		t.Fatal(err)
	}
	if h.indexed {
		t.Error("a plain client counted as indexed")
	}
	if ids, err := binding.Decode(pod.Annotations[contract.IdentitiesAnnotation]); err != nil || len(ids) != 1 || ids[0].Name != "orders-mi" {
		t.Errorf("identities annotation %q: want orders-mi", pod.Annotations[contract.IdentitiesAnnotation])
	}
	if n := testutil.ToFloat64(h.Metrics.liveReads.WithLabelValues("bindings", "true")) + testutil.ToFloat64(h.Metrics.liveReads.WithLabelValues("bindings", "false")); n != 0 {
		t.Errorf("%v live reads of bindings: the full list of the cache resolved the pod", n)
	}
}

// FuzzPodKeys: the keys of the cached reads are what inject.Decide reads from the same object. The reference
// decodes metadata as Decide's pod view does (same decoder, labels as a map); wherever it decodes, podKeys
// must too, with the same namespace and aadpodidbinding label. The seeds hold the edge cases (duplicate keys,
// null values, keys differing in case, escapes).
func FuzzPodKeys(f *testing.F) {
	for _, raw := range goldenPods(f) {
		f.Add(string(raw))
	}
	for _, s := range []string{
		`{"metadata":{"labels":{"aadpodidbinding":"a","aadpodidbinding":"b"}}}`,
		`{"metadata":{"labels":{"aadpodidbinding":"a","aadpodidbinding":null}}}`,
		`{"metadata":{"labels":{"aadpodidbinding":null}}}`,
		`{"metadata":{"labels":{"aadpodidbinding":"a"},"labels":null}}`,
		`{"metadata":{"labels":{"aadpodidbinding":"a"},"labels":{"x":"y"}}}`,
		`{"metadata":{"labels":{"aadpodidbinding":"a"}},"metadata":{"namespace":"n"}}`,
		`{"metadata":{"labels":{"aadpodidbinding":"a"}},"metadata":null}`,
		`{"metadata":{"labels":{"AadPodIdBinding":"a"}}}`,
		`{"Metadata":{"labels":{"aadpodidbinding":"a"}}}`,
		`{"metadata":{"Labels":{"aadpodidbinding":"a"}}}`,
		`{"metadata":{"labels":{"aadpodidbindin\u0067":"\u0061"}}}`,
		`{"metadata":{"labels":{"aadpodidbinding":1}}}`,
		`{"metadata":{"labels":{"other":1,"aadpodidbinding":"a"}}}`,
		`{"metadata":{"namespace":"n","labels":["aadpodidbinding"]}}`,
		`{"metadata":{"namespace":7}}`,
		`{"metadata":{"namespace":""}}`,
		`null`, `[]`, `{`, ``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		var ref struct {
			Metadata *struct {
				Namespace string            `json:"namespace"`
				Labels    map[string]string `json:"labels"`
			} `json:"metadata"`
		}
		refErr := sigsjson.UnmarshalCaseSensitivePreserveInts([]byte(raw), &ref)
		pod, ok := podKeys([]byte(raw), "req")
		if refErr != nil {
			return // Decide denies the object, whatever was read
		}
		if !ok {
			t.Fatalf("podKeys failed on an object Decide reads: %s", raw)
		}
		wantNS, wantSel := "req", ""
		if m := ref.Metadata; m != nil {
			if m.Namespace != "" {
				wantNS = m.Namespace
			}
			wantSel = m.Labels[aadv1.PodLabelBinding]
		}
		if pod.Namespace != wantNS || binding.Selector(pod) != wantSel {
			t.Fatalf("%s: podKeys read namespace %q selector %q; Decide reads %q %q", raw, pod.Namespace, binding.Selector(pod), wantNS, wantSel)
		}
	})
}
