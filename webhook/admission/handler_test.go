package admission

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/webhook/inject"
)

const assigner = "system:serviceaccount:podidentity-system:podidentity-assigner"

func testScheme(t testing.TB) *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := aadv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// cachedClient stands for the manager's cache: a fake client with the index the handler reads bindings
// through (the handler registers it itself on a real cache). The API server (Handler.Live) is a plain fake.
func cachedClient(t testing.TB, objs ...client.Object) client.Client {
	return fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(objs...).
		WithIndex(&aadv1.AzureIdentityBinding{}, BindingSelectorField, bindingSelector).Build()
}

// newHandler serves namespace "shop" (opted in) and "plain" (not), with one binding of selector "orders".
func newHandler(t testing.TB) (*Handler, *prometheus.Registry) {
	t.Helper()
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: "orders-mi", Namespace: "shop"}, Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.UserAssignedMSI, ClientID: "00000000-0000-0000-0000-00000000a001",
			ResourceID: "/subscriptions/1111/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders-mi"}},
		&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "orders-mi", Selector: "orders"}},
	}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return &Handler{
		Reader:           cachedClient(t, objs...),
		Settings:         inject.DefaultSettings(),
		Injector:         inject.NewInjector(inject.DefaultSettings()),
		AssignerUsername: assigner,
		Metrics:          m,
		Log:              logr.Discard(),
	}, reg
}

func podJSON(t testing.TB, ns string, mutate func(*corev1.Pod)) []byte {
	t.Helper()
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns, Labels: map[string]string{aadv1.PodLabelBinding: "orders"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
	if mutate != nil {
		mutate(p)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func request(op admissionv1.Operation, ns, user string, obj, old []byte) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: ns, Name: "p", Operation: op, UserInfo: authnv1.UserInfo{Username: user},
		Object: k8sruntime.RawExtension{Raw: obj}, OldObject: k8sruntime.RawExtension{Raw: old},
	}}
}

func TestHandle(t *testing.T) {
	injected := func(t testing.TB) []byte {
		h, _ := newHandler(t)
		raw := podJSON(t, "shop", nil)
		resp := h.Handle(context.Background(), request(admissionv1.Create, "shop", "alice", raw, nil))
		return apply(t, raw, resp)
	}
	withAnnotation := func(t testing.TB, pod []byte, value string) []byte {
		var m map[string]any
		_ = json.Unmarshal(pod, &m)
		m["metadata"].(map[string]any)["annotations"].(map[string]any)[contract.IdentitiesAnnotation] = value
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name        string
		req         func(t testing.TB) admission.Request
		wantAllowed bool
		wantPatch   bool
		wantMessage string
		wantResult  Result
	}{
		{"create in opted-in namespace is injected", func(t testing.TB) admission.Request {
			return request(admissionv1.Create, "shop", "alice", podJSON(t, "shop", nil), nil)
		}, true, true, "", ResultInjected},
		{"create in a namespace without the label is skipped", func(t testing.TB) admission.Request {
			return request(admissionv1.Create, "plain", "alice", podJSON(t, "plain", nil), nil)
		}, true, false, "", ResultSkipped},
		{"create in a missing namespace is skipped", func(t testing.TB) admission.Request {
			return request(admissionv1.Create, "gone", "alice", podJSON(t, "gone", nil), nil)
		}, true, false, "", ResultSkipped},
		{"create of a NET_ADMIN pod is denied", func(t testing.TB) admission.Request {
			return request(admissionv1.Create, "shop", "alice", podJSON(t, "shop", func(p *corev1.Pod) {
				p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}}}
			}), nil)
		}, false, false, "adds capability NET_ADMIN", ResultDenied},
		{"create of malformed JSON is denied", func(t testing.TB) admission.Request {
			return request(admissionv1.Create, "shop", "alice", []byte(`{"spec":`), nil)
		}, false, false, "cannot be read as a pod", ResultDenied},
		{"update of the annotation by a user is denied", func(t testing.TB) admission.Request {
			old := injected(t)
			return request(admissionv1.Update, "shop", "alice", withAnnotation(t, old, "[]"), old)
		}, false, false, "only " + assigner + " may change it", ResultDenied},
		{"update of the annotation by the assigner is allowed", func(t testing.TB) admission.Request {
			old := injected(t)
			return request(admissionv1.Update, "shop", assigner, withAnnotation(t, old, "[]"), old)
		}, true, false, "", ResultAllowed},
		{"update of the sidecar image by a user is denied", func(t testing.TB) admission.Request {
			old := injected(t)
			s := strings.Replace(string(old), "podidentity-sidecar:latest", "evil:1", 1)
			return request(admissionv1.Update, "shop", "alice", []byte(s), old)
		}, false, false, "container podidentity-sidecar", ResultDenied},
		{"update of another label by a user is allowed", func(t testing.TB) admission.Request {
			old := injected(t)
			s := strings.Replace(string(old), `"aadpodidbinding":"orders"`, `"aadpodidbinding":"orders","team":"x"`, 1)
			return request(admissionv1.Update, "shop", "alice", []byte(s), old)
		}, true, false, "", ResultAllowed},
		{"privileged debug container on an injected pod is denied", func(t testing.TB) admission.Request {
			var p corev1.Pod
			_ = json.Unmarshal(injected(t), &p)
			p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "debugger", Image: "busybox", SecurityContext: &corev1.SecurityContext{Privileged: ptr(true)}}}}
			b, _ := json.Marshal(&p)
			r := request(admissionv1.Update, "shop", "alice", b, nil)
			r.SubResource = "ephemeralcontainers"
			return r
		}, false, false, `ephemeral container "debugger" is privileged`, ResultDenied},
		{"delete is allowed", func(t testing.TB) admission.Request {
			return request(admissionv1.Delete, "shop", "alice", nil, nil)
		}, true, false, "", ResultAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, reg := newHandler(t)
			req := tc.req(t)
			resp := h.Handle(context.Background(), req)
			if resp.Allowed != tc.wantAllowed {
				t.Fatalf("allowed = %v, want %v (%v)", resp.Allowed, tc.wantAllowed, resp.Result)
			}
			if (len(resp.Patches) > 0) != tc.wantPatch {
				t.Errorf("patch present = %v, want %v", len(resp.Patches) > 0, tc.wantPatch)
			}
			if tc.wantMessage != "" && (resp.Result == nil || !strings.Contains(resp.Result.Message, tc.wantMessage)) {
				t.Errorf("message %v does not contain %q", resp.Result, tc.wantMessage)
			}
			got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues(operationLabel(string(req.Operation)), string(tc.wantResult)))
			if got != 1 {
				t.Errorf("podidentity_webhook_admissions_total{result=%s} = %v, want 1", tc.wantResult, got)
			}
			if n, err := testutil.GatherAndCount(reg, "podidentity_webhook_admissions_total"); err != nil || n != 1 {
				t.Errorf("admissions series = %d (%v), want exactly 1", n, err)
			}
		})
	}
}

// apply applies the response's patch to raw, failing the test when it does not apply.
func apply(t testing.TB, raw []byte, resp admission.Response) []byte {
	t.Helper()
	if len(resp.Patches) == 0 {
		return raw
	}
	pb, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatchapply.DecodePatch(pb)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("response patch does not apply to the object: %v", err)
	}
	return out
}

// goldenPods returns the raw pods of the golden inputs, for fuzz seeds and benchmarks.
func goldenPods(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("../testdata/golden/*.in.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Pod json.RawMessage `json:"pod"`
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".in.yaml")] = doc.Pod
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// TestUIDChangePolicy checks that the policy reaches the response: denial and its metric label under deny,
// admission warnings under warn, for pod creation and for debug containers.
func TestUIDChangePolicy(t *testing.T) {
	debugged := func(t testing.TB, h *Handler) admission.Request {
		raw := podJSON(t, "shop", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
		})
		var p corev1.Pod
		_ = json.Unmarshal(apply(t, raw, h.Handle(context.Background(), request(admissionv1.Create, "shop", "alice", raw, nil))), &p)
		p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: "busybox"}}}
		b, _ := json.Marshal(&p)
		r := request(admissionv1.Update, "shop", "alice", b, nil)
		r.SubResource = "ephemeralcontainers"
		return r
	}
	tests := []struct {
		name        string
		policy      inject.UIDChangePolicy
		req         func(testing.TB, *Handler) admission.Request
		wantAllowed bool
		wantResult  Result
		wantWarning bool
	}{
		{"deny: root app container", inject.UIDChangeDeny, func(t testing.TB, _ *Handler) admission.Request {
			return request(admissionv1.Create, "shop", "alice", podJSON(t, "shop", nil), nil)
		}, false, ResultDenied, false},
		{"warn: root app container", inject.UIDChangeWarn, func(t testing.TB, _ *Handler) admission.Request {
			return request(admissionv1.Create, "shop", "alice", podJSON(t, "shop", nil), nil)
		}, true, ResultInjected, true},
		{"ignore: root app container", inject.UIDChangeIgnore, func(t testing.TB, _ *Handler) admission.Request {
			return request(admissionv1.Create, "shop", "alice", podJSON(t, "shop", nil), nil)
		}, true, ResultInjected, false},
		{"deny: root debug container", inject.UIDChangeDeny, debugged, false, ResultDenied, false},
		{"warn: root debug container", inject.UIDChangeWarn, debugged, true, ResultAllowed, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newHandler(t)
			h.Settings.Exemption = inject.ExemptionUID
			h.Settings.UIDChangePolicy = tc.policy
			h.Injector = inject.NewInjector(h.Settings)
			req := tc.req(t, h)
			before := testutil.ToFloat64(h.Metrics.denied.WithLabelValues(string(inject.ReasonUIDChange)))
			resp := h.Handle(context.Background(), req)
			if resp.Allowed != tc.wantAllowed {
				t.Fatalf("allowed = %v, want %v (%v)", resp.Allowed, tc.wantAllowed, resp.Result)
			}
			if got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues(operationLabel(string(req.Operation)), string(tc.wantResult))); got < 1 {
				t.Errorf("no admission counted with result %s", tc.wantResult)
			}
			denied := testutil.ToFloat64(h.Metrics.denied.WithLabelValues(string(inject.ReasonUIDChange))) - before
			if (denied == 1) != !tc.wantAllowed {
				t.Errorf("podidentity_webhook_denied_total{reason=uid-change} rose by %v", denied)
			}
			if !tc.wantAllowed && (!strings.HasPrefix(resp.Result.Message, "podidentity: ") || strings.Count(resp.Result.Message, "podidentity: ") != 1 || !strings.Contains(resp.Result.Message, "can change its uid")) {
				t.Errorf("denial %q does not explain the uid change", resp.Result.Message)
			}
			warned := false
			for _, w := range resp.Warnings {
				warned = warned || strings.Contains(w, "can change its uid")
			}
			if warned != tc.wantWarning {
				t.Errorf("warnings %q, want a uid-change warning: %v", resp.Warnings, tc.wantWarning)
			}
		})
	}
}

// TestStaleCacheNeverSkips: what the cache says is confirmed live whenever it would skip the pod or bind it to
// fewer identities, and the live answer decides. The cache (Reader) and the API server (Live) are two fake
// clients that disagree the way a lagging informer and the API server do.
func TestStaleCacheNeverSkips(t *testing.T) {
	enabled := map[string]string{contract.NamespaceInjectionLabel: "enabled"}
	identity := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: "orders-mi", Namespace: "shop"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.UserAssignedMSI, ClientID: "00000000-0000-0000-0000-00000000a001",
		ResourceID: "/subscriptions/1111/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders-mi"}}
	bindingObj := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "orders-mi", Selector: "orders"}}
	exception := &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Name: "batch", Namespace: "shop"}, Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{aadv1.PodLabelBinding: "orders"}}}
	ns := func(labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: labels}}
	}
	tests := []struct {
		name           string
		cached, live   []client.Object
		wantResult     Result
		wantIdentities string // the annotation's value when injected
		wantLive       string // object label of the live read, "" when none
		wantChanged    bool
	}{
		{"namespace not cached yet", []client.Object{identity, bindingObj}, []client.Object{ns(enabled), identity, bindingObj},
			ResultInjected, "orders-mi", "namespace", true},
		{"namespace cached before its label", []client.Object{ns(nil), identity, bindingObj}, []client.Object{ns(enabled), identity, bindingObj},
			ResultInjected, "orders-mi", "namespace", true},
		{"namespace not opted in, confirmed", []client.Object{ns(nil)}, []client.Object{ns(nil)},
			ResultSkipped, "", "namespace", false},
		{"namespace gone, confirmed", nil, nil, ResultSkipped, "", "namespace", false},
		{"cached opt-in is trusted", []client.Object{ns(enabled), identity, bindingObj}, []client.Object{ns(nil)},
			ResultInjected, "orders-mi", "", false},
		{"binding not cached yet", []client.Object{ns(enabled), identity}, []client.Object{ns(enabled), identity, bindingObj},
			ResultInjected, "orders-mi", "bindings", true},
		{"identity not cached yet", []client.Object{ns(enabled), bindingObj}, []client.Object{ns(enabled), identity, bindingObj},
			ResultInjected, "orders-mi", "bindings", true},
		{"selector bound to nothing, confirmed", []client.Object{ns(enabled)}, []client.Object{ns(enabled)},
			ResultInjected, "", "bindings", false},
		{"exception deleted, still cached", []client.Object{ns(enabled), identity, bindingObj, exception}, []client.Object{ns(enabled), identity, bindingObj},
			ResultInjected, "orders-mi", "exceptions", true},
		{"exception confirmed", []client.Object{ns(enabled), identity, bindingObj, exception}, []client.Object{ns(enabled), identity, bindingObj, exception},
			ResultSkipped, "", "exceptions", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, reg := newHandler(t)
			h.Reader = cachedClient(t, tc.cached...)
			h.Live = fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(tc.live...).Build()
			raw := podJSON(t, "shop", nil)
			resp := h.Handle(context.Background(), request(admissionv1.Create, "shop", "alice", raw, nil))
			if !resp.Allowed {
				t.Fatalf("denied: %v", resp.Result)
			}
			if got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues("CREATE", string(tc.wantResult))); got != 1 {
				t.Fatalf("admissions{result=%s} = %v, want 1", tc.wantResult, got)
			}
			var pod corev1.Pod
			if err := json.Unmarshal(apply(t, raw, resp), &pod); err != nil {
				t.Fatal(err)
			}
			if tc.wantResult == ResultInjected {
				var names []string
				if ids, err := binding.Decode(pod.Annotations[contract.IdentitiesAnnotation]); err == nil {
					for _, id := range ids {
						names = append(names, id.Name)
					}
				}
				if strings.Join(names, ",") != tc.wantIdentities {
					t.Errorf("identities %v, want %q", names, tc.wantIdentities)
				}
			}
			n, err := testutil.GatherAndCount(reg, "podidentity_webhook_live_reads_total")
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantLive == "" {
				if n != 0 {
					t.Errorf("%d live reads counted, want none (the cache's answer was safe)", n)
				}
				return
			}
			if got := testutil.ToFloat64(h.Metrics.liveReads.WithLabelValues(tc.wantLive, strconv.FormatBool(tc.wantChanged))); got != 1 {
				t.Errorf("live_reads_total{object=%s,changed=%v} = %v, want 1", tc.wantLive, tc.wantChanged, got)
			}
		})
	}
}

// TestNotSyncedIsAnError: before the caches have synced a pod creation gets an error, never a skip.
func TestNotSyncedIsAnError(t *testing.T) {
	h, _ := newHandler(t)
	calls := 0
	synced := false
	h.Synced = func(context.Context) bool { calls++; return synced }
	req := request(admissionv1.Create, "shop", "alice", podJSON(t, "shop", nil), nil)
	resp := h.Handle(context.Background(), req)
	if resp.Allowed || resp.Result == nil || resp.Result.Code != 503 || !strings.Contains(resp.Result.Message, "not synced yet") {
		t.Fatalf("admission before sync: allowed %v, result %+v; want a 503 error", resp.Allowed, resp.Result)
	}
	synced = true
	if resp := h.Handle(context.Background(), req); !resp.Allowed || len(resp.Patches) == 0 {
		t.Fatalf("admission after sync: allowed %v, %d patches; want injected", resp.Allowed, len(resp.Patches))
	}
	h.Handle(context.Background(), req)
	if calls != 2 {
		t.Errorf("Synced called %d times, want 2 (not again once synced)", calls)
	}
}

// TestSecurityWarnings: a pod admitted in a state that weakens its isolation carries the security-warnings
// annotation and is counted by reason and namespace; a custom opt-in label is the one the webhook reads.
func TestSecurityWarnings(t *testing.T) {
	tests := []struct {
		name       string
		label      string // --namespace-injection-label; "" for the default
		nsLabels   map[string]string
		mutate     func(*corev1.Pod)
		wantResult Result
		wantReason string // annotation value and metric reason; "" for none
	}{
		{"opt-out", "", map[string]string{contract.NamespaceInjectionLabel: "enabled"},
			func(p *corev1.Pod) { p.Annotations = map[string]string{contract.InjectAnnotation: "false"} }, ResultSkipped, "opt-out-annotation"},
		{"host network without binding", "", map[string]string{contract.NamespaceInjectionLabel: "enabled"},
			func(p *corev1.Pod) { p.Labels = nil; p.Spec.HostNetwork = true }, ResultSkipped, "host-network"},
		{"injected, nothing to warn about", "", map[string]string{contract.NamespaceInjectionLabel: "enabled"}, nil, ResultInjected, ""},
		{"custom opt-in label", "example.com/identities", map[string]string{"example.com/identities": "enabled"}, nil, ResultInjected, ""},
		{"default label under a custom one", "example.com/identities", map[string]string{contract.NamespaceInjectionLabel: "enabled"}, nil, ResultSkipped, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, reg := newHandler(t)
			h.InjectionLabel = tc.label
			h.Reader = cachedClient(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: tc.nsLabels}})
			raw := podJSON(t, "shop", tc.mutate)
			resp := h.Handle(context.Background(), request(admissionv1.Create, "shop", "alice", raw, nil))
			if got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues("CREATE", string(tc.wantResult))); got != 1 {
				t.Fatalf("admissions{result=%s} = %v, want 1 (%v)", tc.wantResult, got, resp.Result)
			}
			var pod corev1.Pod
			if err := json.Unmarshal(apply(t, raw, resp), &pod); err != nil {
				t.Fatal(err)
			}
			if got := pod.Annotations[contract.SecurityWarningsAnnotation]; got != tc.wantReason {
				t.Errorf("annotation %s = %q, want %q", contract.SecurityWarningsAnnotation, got, tc.wantReason)
			}
			n, err := testutil.GatherAndCount(reg, "podidentity_webhook_security_warnings_total")
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantReason == "" {
				if n != 0 {
					t.Errorf("%d security warning series, want none", n)
				}
				return
			}
			if got := testutil.ToFloat64(h.Metrics.securityWarnings.WithLabelValues(tc.wantReason, "shop")); got != 1 {
				t.Errorf("security_warnings_total{reason=%s,namespace=shop} = %v, want 1", tc.wantReason, got)
			}
		})
	}
}
