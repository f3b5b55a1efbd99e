package upgrade_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"

	"github.com/podidentity/podidentity/assigner/upgrade"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

var crdGVK = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}

func plural(k upgrade.Kind) string {
	return map[upgrade.Kind]string{
		upgrade.AzureIdentity: "azureidentities", upgrade.AzureIdentityBinding: "azureidentitybindings",
		upgrade.AzureAssignedIdentity: "azureassignedidentities", upgrade.AzurePodIdentityException: "azurepodidentityexceptions",
	}[k]
}

// oldStyleSchemas turns the project's CRDs into pre-1.6-style ones (spec and status keep any field), as a
// cluster that ran AAD Pod Identity before v1.6 had, and returns a function that puts the real schemas back
// and waits until the API server prunes with them again.
func oldStyleSchemas(t *testing.T, ctx context.Context, c client.Client) (restore func()) {
	t.Helper()
	originals := map[upgrade.Kind]*unstructured.Unstructured{}
	for _, k := range upgrade.Kinds() {
		crd := &unstructured.Unstructured{}
		crd.SetGroupVersionKind(crdGVK)
		if err := c.Get(ctx, types.NamespacedName{Name: plural(k) + "." + aadv1.GroupVersion.Group}, crd); err != nil {
			t.Fatal(err)
		}
		originals[k] = crd.DeepCopy()
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		for i := range versions {
			v := versions[i].(map[string]interface{})
			loose := map[string]interface{}{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
			_ = unstructured.SetNestedField(v, loose, "schema", "openAPIV3Schema", "properties", "spec")
			_ = unstructured.SetNestedField(v, loose, "schema", "openAPIV3Schema", "properties", "status")
		}
		_ = unstructured.SetNestedSlice(crd.Object, versions, "spec", "versions")
		if err := c.Update(ctx, crd); err != nil {
			t.Fatalf("loosening the %s CRD: %v", k, err)
		}
		waitPruning(t, ctx, c, k, false)
	}
	return func() {
		for _, k := range upgrade.Kinds() {
			crd := &unstructured.Unstructured{}
			crd.SetGroupVersionKind(crdGVK)
			if err := c.Get(ctx, client.ObjectKeyFromObject(originals[k]), crd); err != nil {
				t.Fatal(err)
			}
			orig := originals[k].DeepCopy()
			orig.SetResourceVersion(crd.GetResourceVersion())
			if err := c.Update(ctx, orig); err != nil {
				t.Fatalf("restoring the %s CRD: %v", k, err)
			}
			waitPruning(t, ctx, c, k, true)
		}
	}
}

// waitPruning waits until the API server serves k with (pruned=true) or without pruning of unknown spec
// fields, by writing a probe object, since a CRD change reaches the served storage asynchronously.
func waitPruning(t *testing.T, ctx context.Context, c client.Client, k upgrade.Kind, pruned bool) {
	t.Helper()
	i := 0
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		i++
		probe := object(k, "default", fmt.Sprintf("probe-%v-%d", pruned, i), map[string]interface{}{"Unknown": "x"}, nil)
		if err := c.Create(ctx, probe); err != nil {
			return false, nil // the CRD may be between versions
		}
		_, kept, _ := unstructured.NestedString(probe.Object, "spec", "Unknown")
		_ = c.Delete(ctx, probe)
		return kept != pruned, nil
	})
	if err != nil {
		t.Fatalf("the %s CRD change did not take effect (pruning %v): %v", k, pruned, err)
	}
}

func object(k upgrade.Kind, ns, name string, spec, status map[string]interface{}) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]interface{}{}}
	u.SetGroupVersionKind(aadv1.GroupVersion.WithKind(string(k)))
	u.SetNamespace(ns)
	u.SetName(name)
	if spec != nil {
		u.Object["spec"] = spec
	}
	if status != nil {
		u.Object["status"] = status
	}
	return u
}

// TestStoredPascalCaseFieldsArePrunedOnRead records what the API server does with pre-1.6
// objects once the structural CRD is installed: this decides whether a start-up upgrade can still see the old
// fields. It asserts the observed behaviour so that a change in Kubernetes is noticed.
func TestStoredPascalCaseFieldsArePrunedOnRead(t *testing.T) {
	env := testenv.Start(t, nil)
	ctx := context.Background()
	c := env.Client
	restore := oldStyleSchemas(t, ctx, c)
	old := object(upgrade.AzureIdentity, "default", "old", map[string]interface{}{"Type": int64(0), "ClientID": "cid", "ResourceID": "/rid"}, nil)
	if err := c.Create(ctx, old); err != nil {
		t.Fatal(err)
	}
	restore()
	got := &unstructured.Unstructured{}
	got.SetGroupVersionKind(old.GroupVersionKind())
	if err := c.Get(ctx, client.ObjectKeyFromObject(old), got); err != nil {
		t.Fatal(err)
	}
	spec, _, _ := unstructured.NestedMap(got.Object, "spec")
	t.Logf("served spec of a PascalCase object after the structural CRD is installed: %v", spec)
	if _, ok := spec["ClientID"]; ok || len(spec) != 0 {
		t.Fatalf("the API server now serves pruned fields stored before the structural CRD (%v); pruning on read has gone: the start-up upgrade can now see old fields; update the README section and upgrade.Run's comment", spec)
	}
}

// TestRunUpgradesPreOneSixObjects stores pre-1.6 objects of all four kinds while the CRDs keep unknown
// fields (as before v1.6), runs the upgrade, installs the project's CRDs again and reads the objects typed.
func TestRunUpgradesPreOneSixObjects(t *testing.T) {
	env := testenv.Start(t, nil)
	ctx := context.Background()
	c := env.Client
	const ns = "kube-system"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	restore := oldStyleSchemas(t, ctx, c)
	objs := []*unstructured.Unstructured{
		object(upgrade.AzureIdentity, "default", "id", map[string]interface{}{"Type": int64(0), "ClientID": "cid",
			"ResourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"},
			map[string]interface{}{"AvailableReplicas": int64(1)}),
		object(upgrade.AzureIdentityBinding, "team-a", "b", map[string]interface{}{"AzureIdentity": "id", "Selector": "sel", "Weight": int64(2)}, nil),
		// written since v1.6 but still carrying the old twin: the camelCase value must survive
		object(upgrade.AzureIdentityBinding, "default", "mixed", map[string]interface{}{"azureIdentity": "id", "selector": "new", "Selector": "old"}, nil),
		object(upgrade.AzureAssignedIdentity, "default", "p-default-id", map[string]interface{}{
			"AzureIdentityRef": map[string]interface{}{"metadata": map[string]interface{}{"name": "id", "namespace": "default"},
				"spec": map[string]interface{}{"ClientID": "cid", "Type": int64(0)}},
			"Pod": "p", "PodNamespace": "default", "NodeName": "node-1"}, map[string]interface{}{"Status": "Assigned"}),
		object(upgrade.AzurePodIdentityException, "default", "ex", map[string]interface{}{"PodLabels": map[string]interface{}{"app": "x"}}, nil),
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("storing pre-1.6 %s: %v", o.GetKind(), err)
		}
	}
	log := testr.New(t)

	res, err := upgrade.Run(ctx, c, ns, log, upgrade.Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantUpgraded := map[upgrade.Kind]int{upgrade.AzureIdentity: 1, upgrade.AzureIdentityBinding: 2, upgrade.AzureAssignedIdentity: 1, upgrade.AzurePodIdentityException: 1}
	if res.Skipped || !reflect.DeepEqual(res.Upgraded, wantUpgraded) {
		t.Fatalf("first run: skipped %v, upgraded %v, want %v", res.Skipped, res.Upgraded, wantUpgraded)
	}
	var cm corev1.ConfigMap
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: upgrade.ConfigMapName}, &cm); err != nil {
		t.Fatalf("completion not recorded: %v", err)
	}
	if cm.Data[upgrade.DoneKey] != upgrade.Version {
		t.Fatalf("ConfigMap data %v, want %s=%s", cm.Data, upgrade.DoneKey, upgrade.Version)
	}

	// A later start skips; a forced run (the one-shot command) finds nothing left to rewrite.
	if res, err = upgrade.Run(ctx, c, ns, log, upgrade.Options{}); err != nil || !res.Skipped || len(res.Scanned) != 0 {
		t.Fatalf("second start: %+v, %v; want skipped without reading anything", res, err)
	}
	if res, err = upgrade.Run(ctx, c, ns, log, upgrade.Options{Force: true}); err != nil || res.Skipped || len(res.Upgraded) != 0 || res.Scanned[upgrade.AzureIdentityBinding] != 2 {
		t.Fatalf("forced rerun: %+v, %v; want everything scanned and nothing rewritten", res, err)
	}

	restore()
	var id aadv1.AzureIdentity
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "id"}, &id); err != nil {
		t.Fatal(err)
	}
	if id.Spec.ClientID != "cid" || id.Spec.ResourceID == "" || id.Status.AvailableReplicas != 1 {
		t.Errorf("AzureIdentity after upgrade: %+v", id)
	}
	var b, mixed aadv1.AzureIdentityBinding
	if err := c.Get(ctx, types.NamespacedName{Namespace: "team-a", Name: "b"}, &b); err != nil {
		t.Fatal(err)
	}
	if b.Spec.AzureIdentity != "id" || b.Spec.Selector != "sel" || b.Spec.Weight != 2 {
		t.Errorf("AzureIdentityBinding after upgrade: %+v", b.Spec)
	}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "mixed"}, &mixed); err != nil {
		t.Fatal(err)
	}
	if mixed.Spec.Selector != "new" {
		t.Errorf("camelCase selector overwritten: %+v", mixed.Spec)
	}
	var aa aadv1.AzureAssignedIdentity
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "p-default-id"}, &aa); err != nil {
		t.Fatal(err)
	}
	if aa.Spec.Pod != "p" || aa.Spec.PodNamespace != "default" || aa.Spec.NodeName != "node-1" || aa.Status.Status != "Assigned" ||
		aa.Spec.AzureIdentityRef == nil || aa.Spec.AzureIdentityRef.Spec.ClientID != "cid" {
		t.Errorf("AzureAssignedIdentity after upgrade: %+v", aa)
	}
	var ex aadv1.AzurePodIdentityException
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "ex"}, &ex); err != nil {
		t.Fatal(err)
	}
	if ex.Spec.PodLabels["app"] != "x" {
		t.Errorf("AzurePodIdentityException after upgrade: %+v", ex.Spec)
	}
}
