package v1_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// readManifests splits a multi-document YAML file into objects.
func readManifests(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", path, err)
		}
		if m == nil {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// missingFrom reports the first path at which want holds something got does not: every field of want must
// appear in got with the same value (got may hold more, e.g. server-set metadata).
func missingFrom(want, got any, path string) string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return path + ": not an object in the read-back"
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				if wv == nil {
					continue
				}
				return path + "." + k + ": missing from the read-back"
			}
			if d := missingFrom(wv, gv, path+"."+k); d != "" {
				return d
			}
		}
		return ""
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return path + ": list differs"
		}
		for i := range w {
			if d := missingFrom(w[i], g[i], path); d != "" {
				return d
			}
		}
		return ""
	default:
		if !reflect.DeepEqual(normalizeNumber(want), normalizeNumber(got)) {
			b1, _ := json.Marshal(want)
			b2, _ := json.Marshal(got)
			return path + ": want " + string(b1) + ", got " + string(b2)
		}
		return ""
	}
}

func normalizeNumber(v any) any {
	switch n := v.(type) {
	case int:
		return int64(n)
	case int32:
		return int64(n)
	case float64:
		if n == float64(int64(n)) {
			return int64(n)
		}
	}
	return v
}

// comparable strips what the server owns from an input manifest's metadata.
func userFields(u *unstructured.Unstructured) map[string]any {
	m := runtime.DeepCopyJSON(u.Object)
	md, _ := m["metadata"].(map[string]any)
	keep := map[string]any{"name": md["name"], "namespace": md["namespace"]}
	if a, ok := md["annotations"]; ok {
		keep["annotations"] = a
	}
	m["metadata"] = keep
	return m
}

func TestAADPodIdentityManifestsRoundTrip(t *testing.T) {
	env := testenv.Start(t, nil)
	ctx := context.Background()
	c := env.Client

	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}); err != nil {
		t.Fatal(err)
	}
	objs := readManifests(t, "testdata/aad-pod-identity-v1.8.yaml")
	if len(objs) < 8 {
		t.Fatalf("expected the full manifest set, read %d objects", len(objs))
	}
	for _, in := range objs {
		obj := in.DeepCopy()
		// Strict field validation is kubectl's default: an unknown field would be an error, not a silent drop.
		if err := c.Create(ctx, obj, client.FieldValidation(metav1.FieldValidationStrict)); err != nil {
			t.Fatalf("create %s %s: %v", in.GetKind(), in.GetName(), err)
		}
		// AAD Pod Identity's AzureAssignedIdentity has no status subresource, so status is written with the
		// object; read it back as a client of either project would.
		back := &unstructured.Unstructured{}
		back.SetGroupVersionKind(in.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKeyFromObject(in), back); err != nil {
			t.Fatal(err)
		}
		if d := missingFrom(userFields(in), back.Object, in.GetKind()+"/"+in.GetName()); d != "" {
			t.Errorf("server read-back differs: %s", d)
		}

		// The Go types must carry every field under the same JSON name, or the components would lose data.
		if in.GetAPIVersion() != aadv1.GroupVersion.String() {
			continue
		}
		typed, err := env.Scheme.New(in.GroupVersionKind())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(in), typed.(client.Object)); err != nil {
			t.Fatal(err)
		}
		typed.GetObjectKind().SetGroupVersionKind(in.GroupVersionKind()) // the typed client clears it
		asMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(typed)
		if err != nil {
			t.Fatal(err)
		}
		if d := missingFrom(userFields(in), asMap, in.GetKind()+"/"+in.GetName()+" (typed)"); d != "" {
			t.Errorf("Go types lose a field: %s", d)
		}
	}

	// Spot checks through the typed API, as the webhook and assigner read them.
	var id aadv1.AzureIdentity
	mustGet(t, c, "sp-identity", &id)
	if id.Spec.Type != aadv1.ServicePrincipal || id.Spec.ClientPassword.Name != "sp-secret" ||
		id.Spec.ClientPassword.Namespace != "apps" || len(id.Spec.AuxiliaryTenantIDs) != 1 ||
		id.Annotations[aadv1.BehaviorAnnotation] != aadv1.BehaviorNamespaced {
		t.Errorf("sp-identity read back as %+v", id)
	}
	var assigned aadv1.AzureAssignedIdentity
	mustGet(t, c, "web-5d8f7-apps-web-identity", &assigned)
	if assigned.Status.Status != aadv1.AssignedIDAssigned || assigned.Spec.NodeName != "aks-nodepool1-12345678-vmss000000" ||
		assigned.Spec.AzureIdentityRef == nil || assigned.Spec.AzureIdentityRef.Spec.ClientID != "11111111-1111-1111-1111-111111111111" ||
		assigned.Spec.AzureBindingRef == nil || assigned.Spec.AzureBindingRef.Spec.Selector != "web" {
		t.Errorf("assigned identity read back as %+v", assigned)
	}
	var exc aadv1.AzurePodIdentityException
	mustGet(t, c, "mic-exception", &exc)
	if exc.Spec.PodLabels["component"] != "mic" {
		t.Errorf("exception read back as %+v", exc)
	}

	// A status update through the main resource is kept (no status subresource, as in AAD Pod Identity).
	assigned.Status.Status = aadv1.AssignedIDUnassigned
	if err := c.Update(ctx, &assigned); err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, assigned.Name, &assigned)
	if assigned.Status.Status != aadv1.AssignedIDUnassigned {
		t.Errorf("status update through the main resource was dropped: %q", assigned.Status.Status)
	}
}

func mustGet(t *testing.T, c client.Client, name string, obj client.Object) {
	t.Helper()
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: "apps", Name: name}, obj); err != nil {
		t.Fatal(err)
	}
}

func TestStrictValidationNamesTheUnknownField(t *testing.T) {
	env := testenv.Start(t, nil)
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}); err != nil {
		t.Fatal(err)
	}
	// A pre-1.6 PascalCase field is unknown to the v1 schema: kubectl's strict validation must say which.
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
		"metadata": map[string]any{"name": "old", "namespace": "apps"},
		"spec":     map[string]any{"type": int64(0), "ClientID": "x"},
	}}
	err := env.Client.Create(ctx, u, client.FieldValidation(metav1.FieldValidationStrict))
	if err == nil || !strings.Contains(err.Error(), `unknown field "spec.ClientID"`) {
		t.Fatalf("want a strict-validation error naming spec.ClientID, got %v", err)
	}
}

func TestPrinterColumns(t *testing.T) {
	env := testenv.Start(t, nil)
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}); err != nil {
		t.Fatal(err)
	}
	for _, in := range readManifests(t, "testdata/aad-pod-identity-v1.8.yaml") {
		if in.GetKind() == "AzureAssignedIdentity" || in.GetKind() == "AzureIdentity" {
			if err := env.Client.Create(ctx, in); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.GroupVersion = &aadv1.GroupVersion
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = serializerFor(env)
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		resource string
		want     map[string]string
	}{
		{"azureassignedidentities", map[string]string{"Name": "web-5d8f7-apps-web-identity", "Pod": "web-5d8f7", "PodNamespace": "apps", "Node": "aks-nodepool1-12345678-vmss000000", "Identity": "web-identity", "Status": "Assigned"}},
		{"azureidentities", map[string]string{"Name": "web-identity", "Type": "0", "ClientID": "11111111-1111-1111-1111-111111111111"}},
	}
	for _, tc := range tests {
		raw, err := rc.Get().Namespace("apps").Resource(tc.resource).
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var table metav1.Table
		if err := json.Unmarshal(raw, &table); err != nil {
			t.Fatal(err)
		}
		var row []any
		for _, r := range table.Rows {
			if len(r.Cells) > 0 && r.Cells[0] == tc.want["Name"] {
				row = r.Cells
			}
		}
		if row == nil {
			t.Fatalf("%s: no row named %s in %d rows", tc.resource, tc.want["Name"], len(table.Rows))
		}
		for i, col := range table.ColumnDefinitions {
			if want, ok := tc.want[col.Name]; ok {
				if got := strings.TrimSuffix(strings.TrimSpace(jsonString(row[i])), ".0"); got != want {
					t.Errorf("%s column %s = %q, want %q", tc.resource, col.Name, got, want)
				}
				delete(tc.want, col.Name)
			}
		}
		for name := range tc.want {
			t.Errorf("%s: no printer column %s", tc.resource, name)
		}
	}
}

func jsonString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func serializerFor(env *testenv.Env) runtime.NegotiatedSerializer {
	return serializer.NewCodecFactory(env.Scheme).WithoutConversion()
}
