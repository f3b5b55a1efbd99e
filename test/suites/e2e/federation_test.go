package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/cluster/install"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/fakecloud"
)

// The scenario needs what test/cluster/install's federation.go lists: the cluster's issuer readable by the fake
// cloud's Azure AD, the sidecar trusting the fake cloud's CA (the release is upgraded for the scenario and its base
// values come back at its end), the application registered with a federated credential.

// federatedIdentity creates a federated AzureIdentity in ns (a managed identity with a federated credential:
// it has a resource ID, so an attachment would be visible in ARM), registers it in the fake cloud's Azure AD with
// a federated credential for issuer and service account ns/serviceAccount, and binds it with selector, narrowed
// to that service account.
func (e *env) federatedIdentity(t *testing.T, ns, name, selector, issuer, serviceAccount string) identity {
	t.Helper()
	ctx := context.Background()
	resourceID := cluster.UserAssignedIdentityID(ns + "-" + name)
	id := identity{Name: name, Namespace: ns, ClientID: arm.ClientIDOf(resourceID), ResourceID: resourceID, Selector: selector}
	if err := e.imds.RegisterFederatedApp(ctx, cluster.TenantID, id.ClientID, issuer, "system:serviceaccount:"+ns+":"+serviceAccount); err != nil {
		t.Fatal(err)
	}
	ai := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{aadv1.BackendAnnotation: aadv1.BackendFederated}},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: resourceID, ClientID: id.ClientID, TenantID: cluster.TenantID},
	}
	if err := e.c.Create(ctx, ai); err != nil {
		t.Fatalf("creating AzureIdentity %s/%s: %v", ns, name, err)
	}
	aib := &aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-binding", Namespace: ns, Annotations: map[string]string{aadv1.ServiceAccountsAnnotation: serviceAccount}},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: name, Selector: selector},
	}
	if err := e.c.Create(ctx, aib); err != nil {
		t.Fatalf("creating AzureIdentityBinding %s/%s-binding: %v", ns, name, err)
	}
	return id
}

// bindAlso binds an existing identity to a second selector (so that one pod label reaches two identities).
func (e *env) bindAlso(t *testing.T, id identity, selector string) {
	t.Helper()
	aib := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: id.Name + "-" + selector, Namespace: id.Namespace},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: id.Name, Selector: selector}}
	if err := e.c.Create(context.Background(), aib); err != nil {
		t.Fatalf("creating AzureIdentityBinding %s/%s: %v", id.Namespace, aib.Name, err)
	}
}

// serviceAccountIssuer returns the cluster's issuer and lets anonymous clients (Azure AD) read its discovery
// document and keys for the rest of the test.
func (e *env) serviceAccountIssuer(t *testing.T) string {
	t.Helper()
	const binding = "e2e-anonymous-issuer-discovery"
	issuer, err := install.OpenIssuerDiscovery(context.Background(), e.cs, binding)
	if errors.Is(err, install.ErrIssuerUnreachable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), binding, metav1.DeleteOptions{})
	})
	return issuer
}

// sidecarTrustsFakeAzureAD copies the fake cloud's CA ConfigMap into ns and upgrades the release so that the
// sidecars it injects from now on trust it, with Azure AD instance discovery off; the base values are restored at
// the end of the test.
func (e *env) sidecarTrustsFakeAzureAD(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	if err := install.CopyAzureCA(ctx, e.cs, ns); err != nil {
		t.Fatal(err)
	}
	if err := e.release.Upgrade(ctx, install.FederatedSidecarValues()); err != nil {
		t.Fatalf("upgrading the release with the sidecar's Azure AD settings: %v", err)
	}
	// helm's --wait returns once the new webhook pods are available, while the old ones still admit pods
	// through their preStop delay: a pod admitted by one got a sidecar without the CA bundle, which then
	// failed every exchange with "certificate signed by unknown authority" (seen once, 8 Dec).
	e.requireReleaseReady(t)
	t.Cleanup(func() {
		if err := e.release.Upgrade(context.Background(), nil); err != nil {
			t.Errorf("restoring the release's base values: %v", err)
		}
	})
}

func (e *env) serviceAccount(t *testing.T, ns, name string) {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if _, err := e.cs.CoreV1().ServiceAccounts(ns).Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating service account %s/%s: %v", ns, name, err)
	}
}

// requireTokenInSidecarOnly fails unless the pod projects the federation token and mounts it into the
// sidecar and no other container.
func requireTokenInSidecarOnly(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	var projected bool
	for _, v := range pod.Spec.Volumes {
		if v.Name == contract.FederatedTokenVolumeName && v.Projected != nil && len(v.Projected.Sources) == 1 &&
			v.Projected.Sources[0].ServiceAccountToken != nil && v.Projected.Sources[0].ServiceAccountToken.Audience == contract.FederatedAudience {
			projected = true
		}
	}
	if !projected {
		t.Fatalf("pod %s has no projected %s token volume %s", pod.Name, contract.FederatedAudience, contract.FederatedTokenVolumeName)
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			mounts := false
			for _, m := range c.VolumeMounts {
				mounts = mounts || m.Name == contract.FederatedTokenVolumeName
			}
			if mounts != (c.Name == contract.SidecarContainerName) {
				t.Fatalf("pod %s: container %s mounts the token: %v (only the sidecar may)", pod.Name, c.Name, mounts)
			}
		}
	}
}

// scenarioFederated: pods bound to a federated identity get its token through the redirect from the Go and
// JavaScript SDKs, exchanged at Azure AD with their own service account token, while ARM never writes that
// identity to the scale set; a pod bound to a node identity and a federated one gets both; a pod of another
// service account with the same label is not bound, and its request is refused.
func (e *env) scenarioFederated(t *testing.T) {
	ctx := context.Background()
	issuer := e.serviceAccountIssuer(t)
	ns := e.namespace(t, "federated", true)
	e.sidecarTrustsFakeAzureAD(t, ns)
	e.serviceAccount(t, ns, "app")
	e.serviceAccount(t, ns, "other")
	fed := e.federatedIdentity(t, ns, "fed", ns+"-fed", issuer, "app")
	node := e.identity(t, ns, "node")
	e.bindAlso(t, node, ns+"-both")
	e.bindAlso(t, fed, ns+"-both") // not narrowed: the pods below all run as app
	before := e.armHistory(t)

	for _, c := range []struct{ sdk, image string }{{"go", e.goImage}, {"js", e.jsImage}} {
		p := appPod("fed-"+c.sdk, c.image, fed.Selector, corev1.RestartPolicyAlways,
			map[string]string{"MODE": "until-ok", "INTERVAL": "100ms", "AZURE_CLIENT_ID": fed.ClientID})
		p.Spec.ServiceAccountName = "app"
		began := time.Now()
		created := e.createPod(t, ns, p)
		requireInjected(t, created, fed)
		requireCABundle(t, created)
		requireTokenInSidecarOnly(t, created)
		// The same measure as scenarioFirstToken's for a node identity already attached: no ARM write is
		// waited for here either, but the sidecar's first exchange at Azure AD is.
		line := e.measureFirstToken(t, "first token, federated identity", c.sdk, ns, p.Name, began, tokenFor(fed))
		if line.SDK != c.sdk || line.Claims["tid"] != cluster.TenantID {
			t.Errorf("token line %+v: want sdk %s and tid %s", line, c.sdk, cluster.TenantID)
		}
	}

	both := appPod("both", e.goImage, ns+"-both", corev1.RestartPolicyAlways, nil)
	both.Spec.ServiceAccountName = "app"
	both.Spec.Containers = []corev1.Container{
		appContainer("fed", e.goImage, map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": fed.ClientID}),
		appContainer("node", e.goImage, map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": node.ClientID}),
	}
	requireInjected(t, e.createPod(t, ns, both), fed, node)
	e.waitAppLine(t, ns, "both", "fed", "the federated identity's token beside a node identity", tokenTimeout, tokenFor(fed))
	e.waitAppLine(t, ns, "both", "node", "the node identity's token beside a federated identity", tokenTimeout, tokenFor(node))

	// Another service account, the same label: the binding names service account app only.
	intruder := appPod("intruder", e.goImage, fed.Selector, corev1.RestartPolicyNever,
		map[string]string{"MODE": "raw-imds", "QUERY": "api-version=2018-02-01&resource=https://management.azure.com/&client_id=" + fed.ClientID})
	intruder.Spec.ServiceAccountName = "other"
	created := e.createPod(t, ns, intruder)
	if in := injectionOf(t, created); !in.Sidecar || len(in.Identities) != 0 {
		t.Fatalf("the pod of service account other: injected %v, identities %+v; want injected with none", in.Sidecar, in.Identities)
	}
	for _, v := range created.Spec.Volumes {
		if v.Name == contract.FederatedTokenVolumeName {
			t.Fatalf("the pod of service account other got the token volume")
		}
	}
	e.waitPod(t, ns, "intruder", "its request answered", podTimeout, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	lines, err := e.appLines(ctx, ns, "intruder", "app", false)
	// The pod has no identity at all (asserted above), so its sidecar says that none is bound to it.
	if err != nil || len(lines) != 1 || lines[0].Status != http.StatusBadRequest || !strings.Contains(lines[0].Body, "no identity is bound to this pod") {
		t.Errorf("the pod of service account other: %+v (%v), want 400 saying no identity is bound to this pod", lines, err)
	}

	e.attackFederatedToken(t, ns, fed, node)

	// ARM never carried the federated identity; Azure AD exchanged service account tokens for it.
	for _, ch := range append(before, e.armHistory(t)...) {
		for _, id := range ch.Identities {
			if strings.EqualFold(id, fed.ResourceID) {
				t.Errorf("ARM wrote the federated identity to the node's scale set at %s: %v", ch.Time, ch.Identities)
			}
		}
	}
	counts, err := e.imds.Counts(ctx, fed.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	if counts.Exchanges < 1 || counts.Tokens != counts.Exchanges {
		t.Errorf("Azure AD counts for the federated identity %+v: want exchanges, one token each", counts)
	}
	if c := e.imds.Counters(t); c.TokensByClientID[fed.ClientID] != 0 {
		t.Errorf("IMDS issued %d tokens for the federated identity", c.TokensByClientID[fed.ClientID])
	}
	e.figures.Add(Figure{Scenario: "federated", Name: "federated exchanges at Azure AD (3 pods, 4 SDK clients)", Value: fmt.Sprint(counts.Exchanges)})
}

func (e *env) armHistory(t *testing.T) []fakecloud.Change {
	t.Helper()
	return e.imds.armHistory(t)
}

// attackFederatedToken: the projected service account token is the sidecar's alone. A root app container that
// shares the pod's process namespace cannot read it through the sidecar's /proc/<pid>/root, as root or as the
// sidecar's uid, and a container that mounts the token volume is refused at admission.
func (e *env) attackFederatedToken(t *testing.T, ns string, fed, unbound identity) {
	t.Helper()
	p := attackPod("steal-token", e.attackerImage, "sidecar-process", unbound.ClientID, fed.Selector)
	p.Spec.ServiceAccountName = "app"
	p.Spec.ShareProcessNamespace = ptr.To(true)
	requireTokenInSidecarOnly(t, e.createPod(t, ns, p))
	res := e.attackOutcome(t, ns, p.Name, "attack")
	const read = "read the sidecar's service account token through /proc/<sidecar>/root"
	var tries []string
	for _, st := range res.Steps {
		if !strings.HasPrefix(st, "uid ") || !strings.Contains(st, read) {
			continue
		}
		tries = append(tries, st)
		if !strings.Contains(st, "permission denied") {
			t.Errorf("attack on the projected token: %q, want permission denied (an error other than that proves nothing)", st)
		}
	}
	if len(tries) != 2 || res.Token {
		t.Errorf("attack on the projected token: tries %q (want one as root, one as the sidecar's uid), token %v; result %+v", tries, res.Token, res)
	}
	e.matrix.Add(MatrixRow{Pod: "root, shareProcessNamespace, bound to a federated identity", Route: "read the sidecar's projected service account token through /proc/<sidecar>/root",
		Verdict: map[bool]string{true: "token", false: "no token"}[res.Token], Stopped: strings.Join(trimAll(tries), "; "), Mode: "federated"})

	mount := appPod("mount-token", e.goImage, fed.Selector, corev1.RestartPolicyNever, nil)
	mount.Spec.ServiceAccountName = "app"
	mount.Spec.Containers[0].VolumeMounts = append(mount.Spec.Containers[0].VolumeMounts,
		corev1.VolumeMount{Name: contract.FederatedTokenVolumeName, MountPath: "/stolen", ReadOnly: true})
	mount.Namespace = ns
	_, err := e.cs.CoreV1().Pods(ns).Create(context.Background(), mount, metav1.CreateOptions{})
	const refusal = "carries the token sidecar's credentials"
	if err == nil || !strings.Contains(err.Error(), refusal) {
		t.Fatalf("an app container mounting %s: %v, want refused at admission with %q", contract.FederatedTokenVolumeName, err, refusal)
	}
	e.matrix.Add(MatrixRow{Pod: "app container mounting the token volume " + contract.FederatedTokenVolumeName, Route: "admission", Verdict: "no token",
		Stopped: "refused at admission: " + trimDenial(err.Error()), Mode: "federated"})
}

func trimAll(steps []string) []string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = trimPIDs(s)
	}
	return out
}

// requireCABundle fails at once, rather than after the first token's timeout, when the pod's sidecar was injected
// without the CA bundle the release now configures (a pod admitted under the release's previous settings).
func requireCABundle(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	for _, v := range pod.Spec.Volumes {
		if v.Name == contract.CABundleVolumeName {
			return
		}
	}
	t.Fatalf("pod %s/%s has no volume %s: its sidecar will not trust the fake cloud's Azure AD (admitted by a webhook pod with the release's previous settings?)", pod.Namespace, pod.Name, contract.CABundleVolumeName)
}
