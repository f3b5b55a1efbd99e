package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
)

// mkFederatedIdentity creates a federated AzureIdentity. It carries a user-assigned identity's resource ID (a
// managed identity with a federated credential has one), so that attaching it would be possible, and wrong.
func mkFederatedIdentity(t testing.TB, c client.Client, ns, name string) {
	t.Helper()
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{aadv1.BackendAnnotation: aadv1.BackendFederated}},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami(name), ClientID: arm.ClientIDOf(uami(name)), TenantID: "tenant"}}
	if err := c.Create(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

// mkFederatedPod creates a pod as the webhook injects one bound to a federated identity: the identities
// annotation and the projected service account token volume (without it the assigner would drop the federated
// identity from the annotation, as the pod's sidecar has no token to exchange).
func mkFederatedPod(t testing.TB, c client.Client, ns, name, node, selector string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{aadv1.PodLabelBinding: selector},
			Annotations: map[string]string{contract.IdentitiesAnnotation: webhookAnnotation(t, c, ns, selector)}},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "default", Containers: []corev1.Container{{Name: "app", Image: "app"}},
			Volumes: []corev1.Volume{{Name: contract.FederatedTokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: contract.FederatedAudience, Path: contract.FederatedTokenFile}}}}}}}},
	}
	if err := c.Create(context.Background(), p); err != nil {
		t.Fatal(err)
	}
}

func annotationOf(c client.Client, ns, name string) ([]binding.Identity, error) {
	var p corev1.Pod
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
		return nil, err
	}
	return binding.Decode(p.Annotations[contract.IdentitiesAnnotation])
}

func identityNames(ids []binding.Identity) string {
	var out []string
	for _, id := range ids {
		out = append(out, id.Namespace+"/"+id.Name)
	}
	return strings.Join(out, ",")
}

// TestFederatedIdentitiesNeverAttached: a pod bound to a node identity and a federated one gets the node
// identity attached and its AzureAssignedIdentity; the federated one is never written to the scale set and gets
// no AzureAssignedIdentity; the pod's annotation keeps both. A pod bound only to a federated identity causes
// no ARM write at all.
func TestFederatedIdentitiesNeverAttached(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{})
	both, fedOnly := ssID("both"), ssID("federated-only")
	srv.AddVMSS(both, false)
	srv.AddVMSS(fedOnly, false)
	mkNode(t, c, "both-0", instanceOf(both, 0))
	mkNode(t, c, "fed-0", instanceOf(fedOnly, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "node", uami("node"))
	mkFederatedIdentity(t, c, "apps", "fed")
	mkBinding(t, c, "apps", "node", "node", "both")
	mkBinding(t, c, "apps", "fed", "fed", "both")
	mkBinding(t, c, "apps", "fed-only", "fed", "fed")
	startAssigner(t, env, armClient(srv), testOptions())

	mkFederatedPod(t, c, "apps", "web", "both-0", "both")
	mkFederatedPod(t, c, "apps", "api", "fed-0", "fed")
	eventually(t, 15*time.Second, "the node identity attached, the federated one not", func() error {
		if err := azureHas(srv, both, false, uami("node")); err != nil {
			return err
		}
		return expectAssigned(c, map[string]string{"apps/web-apps-node": aadv1.AssignedIDAssigned})
	})
	time.Sleep(settle)
	if err := azureHas(srv, both, false, uami("node")); err != nil {
		t.Error(err)
	}
	if err := expectAssigned(c, map[string]string{"apps/web-apps-node": aadv1.AssignedIDAssigned}); err != nil {
		t.Error(err)
	}
	if n := srv.WritesTo(fedOnly); n != 0 {
		t.Errorf("%d ARM writes to the scale set of the federated-only pod, want 0", n)
	}
	for pod, want := range map[string]string{"web": "apps/fed,apps/node", "api": "apps/fed"} {
		ids, err := annotationOf(c, "apps", pod)
		if err != nil || identityNames(ids) != want {
			t.Errorf("pod %s annotation %s (%v), want %s", pod, identityNames(ids), err, want)
		}
	}
}

// TestFederatedOnlyMode: with --federated-only there is no ARM client at all. A federated pod is served as
// above; a pod bound to a node identity gets no attachment, no AzureAssignedIdentity (nothing claims it is on a
// node), and one Warning Event saying what to do.
func TestFederatedOnlyMode(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	mkNode(t, c, "n-0", instanceOf(ssID("pool"), 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "node", uami("node"))
	mkFederatedIdentity(t, c, "apps", "fed")
	mkBinding(t, c, "apps", "node", "node", "both")
	mkBinding(t, c, "apps", "fed", "fed", "both")
	mkBinding(t, c, "apps", "fed-only", "fed", "fed")
	opts := testOptions()
	opts.FederatedOnly = true
	startAssigner(t, env, nil, opts)

	mkFederatedPod(t, c, "apps", "web", "n-0", "both")
	mkFederatedPod(t, c, "apps", "api", "n-0", "fed")
	eventually(t, 15*time.Second, "NodeIdentityNotAttached on the pod bound to a node identity", func() error {
		return hasPodEvent(c, "apps", "web", EventNodeIdentityNotAttached, "node identities apps/node are not attached", "--federated-only",
			aadv1.BackendAnnotation+": "+aadv1.BackendFederated, "assigner.federatedOnly=false")
	})
	// Later passes (a new pod kicks one) tell it nothing more, and the federated pod is never told.
	mkFederatedPod(t, c, "apps", "api-2", "n-0", "fed")
	time.Sleep(settle)
	if err := hasPodEvent(c, "apps", "web", EventNodeIdentityNotAttached); err != nil {
		t.Error(err)
	}
	for _, pod := range []string{"api", "api-2"} {
		if evs, err := podEvents(c, "apps", pod, EventNodeIdentityNotAttached); err != nil || len(evs) != 0 {
			t.Errorf("pod %s: %d events (%v)", pod, len(evs), err)
		}
	}
	if err := expectAssigned(c, map[string]string{}); err != nil {
		t.Error(err)
	}
	ids, err := annotationOf(c, "apps", "api")
	if err != nil || identityNames(ids) != "apps/fed" || !ids[0].Federated() {
		t.Errorf("annotation %+v (%v)", ids, err)
	}
}
