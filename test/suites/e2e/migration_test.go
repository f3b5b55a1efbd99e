package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/controller"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/apps"
	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/cluster/install"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/fakecloud"
)

// MigrationSection is where TestMigrationRehearsal writes its figures in BENCHMARKS.md.
var MigrationSection = Section{
	Begin: "<!-- BEGIN migration rehearsal: written by `go test ./test/suites/e2e/ -run TestMigrationRehearsal`, do not edit by hand -->",
	End:   "<!-- END migration rehearsal -->",
}

// The rehearsal's cast: the namespace of the apps, and their two identities. "web" was created with
// AAD Pod Identity 1.6+ field names in the apps' namespace; "legacy" before 1.6 (PascalCase fields), in
// "default", binding pods of every namespace as AAD Pod Identity allowed.
const (
	migrationNS   = "shop"
	micLockNS     = "default"
	micLockName   = "aad-pod-identity-mic"
	micHolder     = "mic-5f7c9d8b6-x2x7q_0d1e2f"
	webName       = "web"
	legacyName    = "legacy"
	foreignName   = "someone-elses"
	appsDuringRun = 3 // pods: web x2, legacy x1
)

// TestMigrationRehearsal runs docs/migration.md on a cluster in the state a running AAD Pod Identity v1.8
// leaves: its CRDs (schema-less, as clusters from before 1.6 hold them) and objects in both field spellings,
// MIC's AzureAssignedIdentities (its namespace, label, finalizer) kept current by a stand-in for MIC that also
// renews MIC's leader record, the identities attached to the scale set in ARM next to someone else's, and two
// Deployments of the Go SDK client asking IMDS for a token once a second with a fresh credential. It
// measures the longest time an app went without a token, and checks that no identity in use left the scale
// set, that nobody else's identity was touched, and that no AzureAssignedIdentity is left Terminating.
func TestMigrationRehearsal(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the migration rehearsal in -short mode: it starts a real single-node cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping the migration rehearsal: it needs root (kubelet, containerd, network namespaces)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	m := newRehearsal(ctx, t)

	// AAD Pod Identity v1.8, running; the apps get tokens from IMDS (NMI's place).
	installed := time.Now()
	m.installAADPodIdentity(ctx, t)
	m.waitTokens(t, "before the migration", installed)
	began := time.Now()

	// The migration, as docs/migration.md says, step by step.
	m.step(t, "1. one-shot field upgrade Job (manifests/migration), AAD Pod Identity's CRDs still installed", m.fieldUpgrade)
	m.step(t, "2. podidentity's CRDs replace AAD Pod Identity's (kubectl apply --server-side --force-conflicts)", m.applyCRDs)
	m.step(t, "3. helm install with the AAD Pod Identity 4.x values file, assigner.enabled=false", func(ctx context.Context, t *testing.T) {
		m.helm(ctx, t, false)
	})
	m.step(t, "4. opt the namespace in, rollout restart its Deployments", m.optIn)
	uninstalled := time.Now()
	m.step(t, "5. uninstall AAD Pod Identity (MIC and NMI; its objects stay)", m.uninstallMIC)
	m.step(t, "6. helm upgrade with assigner.enabled=true (waits for the assigner to be ready)", func(ctx context.Context, t *testing.T) {
		m.helm(ctx, t, true)
	})
	ready := time.Now()
	m.step(t, "7. the assigner took over: every pod's assignment Assigned, none of MIC's left", m.converged)
	total := time.Since(began)
	time.Sleep(5 * time.Second) // tokens after the take-over too
	ended := time.Now()

	// Measurements.
	gaps := m.tokens.longestGaps(began, ended)
	for _, dep := range []string{webName, legacyName} {
		g, ok := gaps[dep]
		if !ok {
			t.Errorf("Deployment %s: no token at all during the migration", dep)
			continue
		}
		m.figures.Add(Figure{Scenario: "migration", Name: "longest time without a token, Deployment " + dep + " (attempts every 1 s, fresh credential)", Value: seconds(g.length)})
		if g.length > 10*time.Second {
			t.Errorf("Deployment %s went %v without a token (from %s to %s): the migration cut its tokens", dep, g.length.Round(time.Millisecond), g.from.Format(time.TimeOnly), g.to.Format(time.TimeOnly))
		}
	}
	history := m.armHistory(t)
	inUse := []string{m.identityID(webName), m.identityID(legacyName)}
	detached := 0
	for _, ch := range history {
		if ch.Time.Before(began) {
			continue
		}
		for _, id := range append(inUse, m.identityID(foreignName)) {
			if !containsFold(ch.Identities, id) {
				detached++
				t.Errorf("at %s the scale set lost %s, which was in use or not ours: %v", ch.Time.Format(time.TimeOnly), id, ch.Identities)
			}
		}
	}
	m.figures.Add(Figure{Scenario: "migration", Name: "identities detached while in use, or someone else's touched", Value: fmt.Sprint(detached)})
	terminating := m.terminatingAssignments(ctx, t)
	m.figures.Add(Figure{Scenario: "migration", Name: "AzureAssignedIdentities left Terminating", Value: fmt.Sprint(terminating)})
	if terminating != 0 {
		t.Errorf("%d AzureAssignedIdentities are stuck Terminating", terminating)
	}
	m.figures.Add(Figure{Scenario: "migration", Name: "whole migration (field upgrade to take-over)", Value: seconds(total)})
	m.figures.Add(Figure{Scenario: "migration", Name: "assigner ready after MIC was uninstalled (it holds while MIC's leader record is fresh)", Value: seconds(ready.Sub(uninstalled))})
	m.figures.Add(Figure{Scenario: "migration", Name: "ARM writes to the scale set during the migration", Value: fmt.Sprint(countSince(history, began))})

	// What MIC attached is the assigner's now: the last pod of "web" gone, its identity leaves the node;
	// legacy's stays while its pod runs, and someone else's is never touched.
	m.step(t, "8. scale web to 0: its identity (attached by MIC) is detached", func(ctx context.Context, t *testing.T) {
		m.scale(ctx, t, webName, 0)
		m.waitScaleSet(ctx, t, "web's identity detached", []string{m.identityID(legacyName), m.identityID(foreignName)})
	})

	cmd := "go test ./test/suites/e2e/ -run TestMigrationRehearsal"
	if figs := m.figures.List(); *writeFigures && len(figs) > 0 {
		body := "### Migration rehearsal of the last run\n\n" + Render(ThisMachine(cmd, time.Now()), []Outcome{{Scenario: "migration rehearsal", Passed: !t.Failed()}}, figs)
		if err := WriteSection(benchmarksPage(), MigrationSection, body); err != nil {
			t.Errorf("writing BENCHMARKS.md: %v", err)
		}
	}
}

// rehearsal is the migration rehearsal's cluster and what it measures.
type rehearsal struct {
	cluster *cluster.Cluster
	cs      kubernetes.Interface
	c       client.Client
	root    string
	release *install.Release
	goImage string
	figures *Figures
	tokens  *tokenLog
	stopMIC func()
}

func newRehearsal(ctx context.Context, t *testing.T) *rehearsal {
	t.Helper()
	c, err := cluster.Start(ctx, cluster.Options{Log: testLog{t}})
	if err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	// The rehearsal needs a cluster without podidentity: one kept by an earlier run (-e2e.keep) has it.
	if installed, err := hasAADPodIdentityCRDs(ctx, c); err != nil {
		t.Fatal(err)
	} else if installed {
		t.Logf("the running cluster already has the aadpodidentity.k8s.io CRDs: stopping it for a fresh one")
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		if c, err = cluster.Start(ctx, cluster.Options{Log: testLog{t}}); err != nil {
			t.Fatalf("starting the cluster: %v", err)
		}
	}
	m := &rehearsal{cluster: c, figures: &Figures{}}
	t.Cleanup(func() {
		if m.stopMIC != nil {
			m.stopMIC()
		}
		if t.Failed() {
			t.Logf("component logs (all in %s/logs):\n%s", c.StateDir(), c.LogTails(30))
			if m.cs != nil {
				e := &env{cs: m.cs}
				t.Logf("namespace %s:\n%s\nnamespace %s:\n%s", migrationNS, e.diagnose(context.Background(), migrationNS), install.Namespace, e.diagnose(context.Background(), install.Namespace))
			}
		}
		if *keepCluster {
			c.Release()
			return
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	ctrllog.SetLogger(logr.Discard())
	m.cs, m.c = clients(t, c)
	if m.root, err = apps.RootDir(); err != nil {
		t.Fatal(err)
	}
	tar := filepath.Join(m.root, "bin", "e2e", "goclient.tar")
	if m.goImage, err = apps.BuildGoClientImage(ctx, tar); err != nil {
		t.Fatal(err)
	}
	if err := c.ImportImage(ctx, tar); err != nil {
		t.Fatal(err)
	}
	if m.release, err = install.Prepare(ctx, c, install.Options{RepoDir: m.root, HelmHome: filepath.Join(c.StateDir(), "helm-migration"), Log: t.Logf}); err != nil {
		t.Fatalf("importing the podidentity images: %v", err)
	}
	m.tokens = &tokenLog{byDeployment: map[string][]time.Time{}, following: map[string]bool{}}
	return m
}

// step runs one migration step and records how long it took.
func (m *rehearsal) step(t *testing.T, name string, run func(context.Context, *testing.T)) {
	t.Helper()
	began := time.Now()
	t.Logf("migration step %s", name)
	run(context.Background(), t)
	if t.Failed() {
		t.FailNow()
	}
	m.figures.Add(Figure{Scenario: "migration", Name: "step " + name, Value: seconds(time.Since(began))})
}

func (m *rehearsal) identityID(name string) string {
	return cluster.UserAssignedIdentityID("migration-" + name)
}

// installAADPodIdentity leaves the cluster as AAD Pod Identity v1.8 runs it.
func (m *rehearsal) installAADPodIdentity(ctx context.Context, t *testing.T) {
	t.Helper()
	m.applyFile(ctx, t, filepath.Join(m.root, "test", "suites", "e2e", "testdata", "aad-pod-identity-crds.yaml"), false)
	m.waitCRDs(ctx, t)
	if _, err := m.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: migrationNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Once opted in, its pods pull our images from the node's registry with the pull Secret the chart names.
	if err := install.EnsurePullSecret(ctx, m.cluster, migrationNS); err != nil {
		t.Fatal(err)
	}
	web, legacy := m.identityID(webName), m.identityID(legacyName)
	for _, o := range []map[string]any{
		// 1.6+: camelCase.
		{"kind": "AzureIdentity", "metadata": map[string]any{"namespace": migrationNS, "name": webName},
			"spec": map[string]any{"type": 0, "resourceID": web, "clientID": arm.ClientIDOf(web)}},
		{"kind": "AzureIdentityBinding", "metadata": map[string]any{"namespace": migrationNS, "name": webName + "-binding"},
			"spec": map[string]any{"azureIdentity": webName, "selector": webName}},
		{"kind": "AzurePodIdentityException", "metadata": map[string]any{"namespace": migrationNS, "name": "debug-tools"},
			"spec": map[string]any{"podLabels": map[string]any{"app": "debug-tools"}}},
		// Before 1.6: PascalCase, in "default".
		{"kind": "AzureIdentity", "metadata": map[string]any{"namespace": "default", "name": legacyName},
			"spec": map[string]any{"Type": 0, "ResourceID": legacy, "ClientID": arm.ClientIDOf(legacy)}},
		{"kind": "AzureIdentityBinding", "metadata": map[string]any{"namespace": "default", "name": legacyName + "-binding"},
			"spec": map[string]any{"AzureIdentity": legacyName, "Selector": legacyName}},
		{"kind": "AzurePodIdentityException", "metadata": map[string]any{"namespace": "default", "name": "legacy-exception"},
			"spec": map[string]any{"PodLabels": map[string]any{"app": "legacy-tools"}}},
	} {
		o["apiVersion"] = aadv1.GroupVersion.String()
		if err := m.c.Create(ctx, &unstructured.Unstructured{Object: o}); err != nil {
			t.Fatalf("creating %s %v: %v", o["kind"], o["metadata"], err)
		}
	}
	// ARM: MIC attached both identities; someone else attached a third.
	m.setScaleSet(t, []string{web, legacy, m.identityID(foreignName)})
	m.stopMIC = m.runMIC(t)
	for _, d := range []struct {
		name, selector, identity string
		replicas                 int32
	}{{webName, webName, web, 2}, {legacyName, legacyName, legacy, 1}} {
		dep := deployment(d.name, m.goImage, d.selector, d.replicas, map[string]string{
			"MODE": "forever", "INTERVAL": "1s", "FRESH_CREDENTIAL": "true", "ATTEMPT_TIMEOUT": "5s", "AZURE_CLIENT_ID": arm.ClientIDOf(d.identity)})
		if _, err := m.cs.AppsV1().Deployments(migrationNS).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	go m.tokens.follow(ctx, m.cs, migrationNS, map[string]string{webName: arm.ClientIDOf(web), legacyName: arm.ClientIDOf(legacy)})
}

// deployment runs the Go client with the binding label.
func deployment(name, image, selector string, replicas int32, env map[string]string) *appsv1.Deployment {
	pod := appPod(name, image, selector, corev1.RestartPolicyAlways, env)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: pod.Labels}, Spec: pod.Spec},
		},
	}
}

// runMIC stands in for a running MIC: it renews MIC's leader record (an Endpoints annotation, as MIC 1.8
// keeps it) and keeps one AzureAssignedIdentity per app pod the way MIC writes them (namespace "default",
// label nodename, its finalizer, status Assigned), deleting those of pods that are gone. The returned
// function stops it the way an uninstall does: the record stays behind, no longer renewed.
func (m *rehearsal) runMIC(t *testing.T) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	identities := map[string]*aadv1.AzureIdentity{}
	for sel, id := range map[string]types.NamespacedName{webName: {Namespace: migrationNS, Name: webName}, legacyName: {Namespace: "default", Name: legacyName}} {
		rid := m.identityID(sel)
		identities[sel] = &aadv1.AzureIdentity{
			TypeMeta:   metav1.TypeMeta{Kind: "AzureIdentity", APIVersion: aadv1.GroupVersion.String()},
			ObjectMeta: metav1.ObjectMeta{Namespace: id.Namespace, Name: id.Name},
			Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: rid, ClientID: arm.ClientIDOf(rid)},
		}
	}
	renew := func() error {
		rec, _ := json.Marshal(resourcelock.LeaderElectionRecord{HolderIdentity: micHolder, LeaseDurationSeconds: 15,
			AcquireTime: metav1.NewTime(time.Now().Add(-time.Hour)), RenewTime: metav1.NewTime(time.Now())})
		ep := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Namespace: micLockNS, Name: micLockName}} //nolint:staticcheck // MIC 1.8's lock
		err := createOrUpdate(ctx, m.c, ep, func() {
			ep.Annotations = map[string]string{resourcelock.LeaderElectionRecordAnnotationKey: string(rec)}
		})
		return err
	}
	keepAssignments := func() error {
		pods, err := m.cs.CoreV1().Pods(migrationNS).List(ctx, metav1.ListOptions{LabelSelector: aadv1.PodLabelBinding})
		if err != nil {
			return err
		}
		want := map[string]bool{}
		for _, p := range pods.Items {
			id := identities[p.Labels[aadv1.PodLabelBinding]]
			if id == nil || p.Spec.NodeName == "" || p.DeletionTimestamp != nil {
				continue
			}
			name := p.Name + "-" + p.Namespace + "-" + id.Name
			want[name] = true
			o := &aadv1.AzureAssignedIdentity{
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{"nodename": p.Spec.NodeName},
					Finalizers: []string{controller.MICFinalizer}},
				Spec: aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: id.DeepCopy(), AzureBindingRef: &aadv1.AzureIdentityBinding{
					TypeMeta:   metav1.TypeMeta{Kind: "AzureIdentityBinding", APIVersion: aadv1.GroupVersion.String()},
					ObjectMeta: metav1.ObjectMeta{Namespace: id.Namespace, Name: id.Name + "-binding"},
					Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: id.Name, Selector: p.Labels[aadv1.PodLabelBinding]}},
					Pod: p.Name, PodNamespace: p.Namespace, NodeName: p.Spec.NodeName},
				Status: aadv1.AzureAssignedIdentityStatus{Status: aadv1.AssignedIDAssigned, AvailableReplicas: 1},
			}
			if err := m.c.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		var l aadv1.AzureAssignedIdentityList
		if err := m.c.List(ctx, &l, client.InNamespace("default")); err != nil {
			return err
		}
		for i := range l.Items {
			if o := &l.Items[i]; !want[o.Name] {
				// MIC removes its finalizer and deletes the object of a pod that is gone.
				patch := client.MergeFrom(o.DeepCopy())
				o.Finalizers = nil
				if err := m.c.Patch(ctx, o, patch); err != nil && !apierrors.IsNotFound(err) {
					return err
				}
				if err := m.c.Delete(ctx, o); err != nil && !apierrors.IsNotFound(err) {
					return err
				}
			}
		}
		return nil
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if err := renew(); err != nil && ctx.Err() == nil {
				t.Logf("stand-in MIC: renewing the leader record: %v", err)
			}
			if err := keepAssignments(); err != nil && ctx.Err() == nil {
				t.Logf("stand-in MIC: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	stopped := false
	return func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
}

// createOrUpdate creates obj or updates it, with mutate applied.
func createOrUpdate(ctx context.Context, c client.Client, obj client.Object, mutate func()) error {
	if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); apierrors.IsNotFound(err) {
		mutate()
		return c.Create(ctx, obj)
	} else if err != nil {
		return err
	}
	mutate()
	return c.Update(ctx, obj)
}

func (m *rehearsal) uninstallMIC(_ context.Context, _ *testing.T) {
	m.stopMIC()
}

// waitTokens waits until every Deployment has had a token since since.
func (m *rehearsal) waitTokens(t *testing.T, what string, since time.Time) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, podTimeout, true, func(context.Context) (bool, error) {
		gaps := m.tokens.longestGaps(since, time.Now())
		return len(gaps) == 2, nil
	})
	if err != nil {
		t.Fatalf("%s: the apps got no tokens from IMDS within %v\n%s", what, podTimeout, (&env{cs: m.cs}).diagnose(context.Background(), migrationNS))
	}
}

func (m *rehearsal) fieldUpgrade(ctx context.Context, t *testing.T) {
	if _, err := m.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: install.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	image := m.release.Registry + "/podidentity-assigner:" + m.release.Tag
	m.applyFile(ctx, t, filepath.Join(m.root, "manifests", "migration", "crd-field-upgrade.yaml"), false, func(o *unstructured.Unstructured) {
		if o.GetKind() != "Job" {
			return
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		c := containers[0].(map[string]any)
		c["image"], c["imagePullPolicy"] = image, "Always" // the tag is reused by every push: see install.BaseValues
		_ = unstructured.SetNestedSlice(o.Object, containers, "spec", "template", "spec", "containers")
		// Pulled from the node's registry, with the pull Secret Prepare created in the release namespace.
		_ = unstructured.SetNestedSlice(o.Object, []any{map[string]any{"name": install.PullSecret}}, "spec", "template", "spec", "imagePullSecrets")
	})
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		j, err := m.cs.BatchV1().Jobs(install.Namespace).Get(ctx, "podidentity-crd-field-upgrade", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range j.Status.Conditions {
			if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the field upgrade Job did not complete within %v\n%s", podTimeout, (&env{cs: m.cs}).diagnose(ctx, install.Namespace))
	}
	// The pre-1.6 objects now read in camelCase, with nothing PascalCase left.
	for _, c := range []struct{ kind, ns, name, field, pascal string }{
		{"AzureIdentity", "default", legacyName, "resourceID", "ResourceID"},
		{"AzureIdentityBinding", "default", legacyName + "-binding", "selector", "Selector"},
		{"AzurePodIdentityException", "default", "legacy-exception", "podLabels", "PodLabels"},
	} {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion(aadv1.GroupVersion.String())
		u.SetKind(c.kind)
		if err := m.c.Get(ctx, client.ObjectKey{Namespace: c.ns, Name: c.name}, u); err != nil {
			t.Fatal(err)
		}
		spec, _, _ := unstructured.NestedMap(u.Object, "spec")
		if _, ok := spec[c.field]; !ok || spec[c.pascal] != nil {
			t.Errorf("%s %s/%s after the field upgrade: spec %v, want %s and no %s", c.kind, c.ns, c.name, spec, c.field, c.pascal)
		}
	}
	if err := m.cs.BatchV1().Jobs(install.Namespace).Delete(ctx, "podidentity-crd-field-upgrade", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}); err != nil {
		t.Error(err)
	}
}

func (m *rehearsal) applyCRDs(ctx context.Context, t *testing.T) {
	entries, err := os.ReadDir(filepath.Join(m.root, "manifests", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		m.applyFile(ctx, t, filepath.Join(m.root, "manifests", "crds", e.Name()), true)
	}
	m.waitCRDs(ctx, t)
}

// helm installs or upgrades the chart with the AAD Pod Identity 4.x values file first, as a user keeps it.
func (m *rehearsal) helm(ctx context.Context, t *testing.T, assigner bool) {
	legacy := filepath.Join(m.root, "test", "suites", "packaging", "testdata", "aad-pod-identity-4.x-values.yaml")
	for _, ns := range []string{"apps", "batch"} { // the file's azureIdentities live there
		if _, err := m.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		if err := install.EnsurePullSecret(ctx, m.cluster, ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.release.UpgradeWithFiles(ctx, []string{legacy}, map[string]any{"assigner": map[string]any{"enabled": assigner}}); err != nil {
		t.Fatal(err)
	}
}

func (m *rehearsal) optIn(ctx context.Context, t *testing.T) {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:"enabled"}}}`, contract.NamespaceInjectionLabel)
	if _, err := m.cs.CoreV1().Namespaces().Patch(ctx, migrationNS, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	restart := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	for _, d := range []string{webName, legacyName} {
		if _, err := m.cs.AppsV1().Deployments(migrationNS).Patch(ctx, d, types.StrategicMergePatchType, []byte(restart), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	m.waitRollouts(ctx, t)
	pods, err := m.cs.CoreV1().Pods(migrationNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if in := injectionOf(t, &pods.Items[i]); !in.Init || !in.Sidecar {
			t.Errorf("pod %s after the rollout restart is not injected (init %v, sidecar %v)", pods.Items[i].Name, in.Init, in.Sidecar)
		}
	}
}

// waitRollouts waits until every Deployment of the namespace runs only pods of its newest template.
func (m *rehearsal) waitRollouts(ctx context.Context, t *testing.T) {
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		deps, err := m.cs.AppsV1().Deployments(migrationNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, d := range deps.Items {
			s := d.Status
			if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != *d.Spec.Replicas || s.Replicas != *d.Spec.Replicas || s.AvailableReplicas != *d.Spec.Replicas {
				return false, nil
			}
		}
		pods, err := m.cs.CoreV1().Pods(migrationNS).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == appsDuringRun, nil
	})
	if err != nil {
		t.Fatalf("the rollouts did not finish within %v\n%s", podTimeout, (&env{cs: m.cs}).diagnose(ctx, migrationNS))
	}
}

// converged waits until every app pod's assignments are the assigner's and Assigned, and none of MIC's is left.
func (m *rehearsal) converged(ctx context.Context, t *testing.T) {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		pods, err := m.cs.CoreV1().Pods(migrationNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		want := map[string]bool{}
		for _, p := range pods.Items {
			ns := migrationNS
			if p.Labels[aadv1.PodLabelBinding] == legacyName {
				ns = "default"
			}
			want[ns+"/"+p.Name+"-"+p.Namespace+"-"+p.Labels[aadv1.PodLabelBinding]] = true
		}
		var l aadv1.AzureAssignedIdentityList
		if err := m.c.List(ctx, &l); err != nil {
			return false, nil
		}
		var problems []string
		for _, a := range l.Items {
			k := a.Namespace + "/" + a.Name
			switch {
			case !want[k]:
				problems = append(problems, k+" is not wanted (MIC's leftover?)")
			case a.Annotations[desired.ResourceAnnotation] == "":
				problems = append(problems, k+" is still MIC's")
			case a.Status.Status != aadv1.AssignedIDAssigned:
				problems = append(problems, k+" is "+a.Status.Status)
			}
			delete(want, k)
		}
		for k := range want {
			problems = append(problems, k+" is missing")
		}
		sort.Strings(problems)
		last = strings.Join(problems, "; ")
		return len(problems) == 0, nil
	})
	if err != nil {
		t.Fatalf("the assigner did not take over within %v: %s\n%s", podTimeout, last, (&env{cs: m.cs}).diagnose(ctx, install.Namespace))
	}
}

func (m *rehearsal) terminatingAssignments(ctx context.Context, t *testing.T) int {
	var l aadv1.AzureAssignedIdentityList
	if err := m.c.List(ctx, &l); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range l.Items {
		if a.DeletionTimestamp != nil {
			n++
		}
	}
	return n
}

func (m *rehearsal) scale(ctx context.Context, t *testing.T, name string, replicas int32) {
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := m.cs.AppsV1().Deployments(migrationNS).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitScaleSet waits until the node's scale set holds exactly ids.
func (m *rehearsal) waitScaleSet(ctx context.Context, t *testing.T, what string, ids []string) {
	var got []string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, podTimeout, true, func(context.Context) (bool, error) {
		h := m.armHistory(t)
		if len(h) == 0 {
			return false, nil
		}
		got = h[len(h)-1].Identities
		return sameFold(got, ids), nil
	})
	if err != nil {
		t.Fatalf("%s: the scale set holds %v, want %v", what, got, ids)
	}
}

// setScaleSet replaces the scale set's identities out of band, as another controller left them.
func (m *rehearsal) setScaleSet(t *testing.T, ids []string) {
	t.Helper()
	newIMDSAdmin().put(t, "/arm/node-scale-set/identities", ids)
}

func (m *rehearsal) armHistory(t *testing.T) []fakecloud.Change {
	t.Helper()
	return newIMDSAdmin().armHistory(t)
}

// applyFile creates (or, with serverSide, server-side applies with force, as kubectl apply --server-side
// --force-conflicts does) every object of a YAML file; mutate may change them first.
func (m *rehearsal) applyFile(ctx context.Context, t *testing.T, path string, serverSide bool, mutate ...func(*unstructured.Unstructured)) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var o map[string]any
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(o) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: o}
		for _, f := range mutate {
			f(u)
		}
		if serverSide {
			err = m.c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.ForceOwnership, client.FieldOwner("kubectl"))
		} else {
			err = m.c.Create(ctx, u)
		}
		if err != nil {
			t.Fatalf("%s: %s %s: %v", path, u.GetKind(), u.GetName(), err)
		}
	}
}

// waitCRDs waits until the four aadpodidentity.k8s.io CRDs are established and served.
func (m *rehearsal) waitCRDs(ctx context.Context, t *testing.T) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, l := range []client.ObjectList{&aadv1.AzureIdentityList{}, &aadv1.AzureIdentityBindingList{}, &aadv1.AzureAssignedIdentityList{}, &aadv1.AzurePodIdentityExceptionList{}} {
			if err := m.c.List(ctx, l); err != nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the aadpodidentity.k8s.io CRDs are not served within a minute")
	}
}

// tokenLog follows the app containers of a namespace and records when each Deployment got a token for its
// identity (old and new pods alike: the log of a pod is read while it runs, so a deleted pod's lines count).
type tokenLog struct {
	mu           sync.Mutex
	byDeployment map[string][]time.Time
	following    map[string]bool
}

func (l *tokenLog) follow(ctx context.Context, cs kubernetes.Interface, ns string, clientIDs map[string]string) {
	for ctx.Err() == nil {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, p := range pods.Items {
				dep := p.Labels["app"]
				if clientIDs[dep] == "" || !appStarted(&p) {
					continue
				}
				l.mu.Lock()
				seen := l.following[p.Name]
				l.following[p.Name] = true
				l.mu.Unlock()
				if !seen {
					go l.stream(ctx, cs, ns, p.Name, dep, clientIDs[dep])
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func appStarted(p *corev1.Pod) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == "app" && (s.State.Running != nil || s.State.Terminated != nil) {
			return true
		}
	}
	return false
}

func (l *tokenLog) stream(ctx context.Context, cs kubernetes.Interface, ns, pod, dep, clientID string) {
	rc, err := cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: "app", Follow: true}).Stream(ctx)
	if err != nil {
		return
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line appLine
		if json.Unmarshal(sc.Bytes(), &line) != nil || !line.OK || !strings.EqualFold(fmt.Sprint(line.Claims["appid"]), clientID) {
			continue
		}
		l.mu.Lock()
		l.byDeployment[dep] = append(l.byDeployment[dep], line.Time)
		l.mu.Unlock()
	}
}

type gap struct {
	from, to time.Time
	length   time.Duration
}

// longestGaps returns, per Deployment with a token in [from, to], the longest stretch of that window without
// one (the window's ends count).
func (l *tokenLog) longestGaps(from, to time.Time) map[string]gap {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]gap{}
	for dep, times := range l.byDeployment {
		var in []time.Time
		for _, ts := range times {
			if !ts.Before(from) && !ts.After(to) {
				in = append(in, ts)
			}
		}
		if len(in) == 0 {
			continue
		}
		sort.Slice(in, func(i, j int) bool { return in[i].Before(in[j]) })
		points := append(append([]time.Time{from}, in...), to)
		var longest gap
		for i := 1; i < len(points); i++ {
			if d := points[i].Sub(points[i-1]); d > longest.length {
				longest = gap{from: points[i-1], to: points[i], length: d}
			}
		}
		out[dep] = longest
	}
	return out
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func sameFold(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !containsFold(b, x) {
			return false
		}
	}
	return true
}

func countSince(h []fakecloud.Change, since time.Time) int {
	n := 0
	for _, ch := range h {
		if !ch.Time.Before(since) {
			n++
		}
	}
	return n
}

// hasAADPodIdentityCRDs tells whether the cluster serves the aadpodidentity.k8s.io group.
func hasAADPodIdentityCRDs(ctx context.Context, c *cluster.Cluster) (bool, error) {
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return false, err
	}
	_, err = cs.Discovery().ServerResourcesForGroupVersion(aadv1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}
