// Package cnitest holds what the CNI mode's integration tests share: the podidentity-node service account with
// exactly the RBAC rules the chart must grant it (so the tests prove the rules suffice), its token, and
// container ids. Cgroups laid out like the kubelet's are nstest.CgroupTree.
package cnitest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podidentity/podidentity/test/toolbox/nstest"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

// RequireRoot skips the test, saying why, under -short or when not root; otherwise nstest.Require.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping in -short mode: this test creates network namespaces, cgroups and nftables rules and starts kube-apiserver")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: this test needs root (it creates network namespaces, cgroups and nftables rules); run `sudo go test ./cni/...`")
	}
	nstest.Require(t)
}

// RBACRules are the podidentity-node ClusterRole's rules, as cni/README.md lists them for the chart.
func RBACRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		// The plugin reads the pod being created; the agent watches the pods of its node.
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		// Whether the pod's namespace is opted in.
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get"}},
		// Excepted pods are neither fenced nor redirected.
		{APIGroups: []string{"aadpodidentity.k8s.io"}, Resources: []string{"azurepodidentityexceptions"}, Verbs: []string{"list"}},
		// The uninstall check at shutdown.
		{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
		// PodIdentityRepaired and the other Events (the events.k8s.io recorder patches a repeated Event).
		{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
	}
}

// ServiceAccount creates namespace/name bound to a ClusterRole with rules (nil: none) and returns a token for
// it.
func ServiceAccount(t testing.TB, cs kubernetes.Interface, namespace, name string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if rules != nil {
		role := namespace + ":" + name
		if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules},
			metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: namespace, Name: name}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	expiry := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", namespace, name, err)
	}
	return tr.Status.Token
}

// AsToken is cfg authenticating with token instead of the test's admin certificate.
func AsToken(cfg *rest.Config, token string) *rest.Config {
	return &rest.Config{Host: cfg.Host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData}}
}

// WaitAuthorized waits until RBAC lets cs get pods in namespace (the authorizer's cache lags a bit).
func WaitAuthorized(t testing.TB, cs kubernetes.Interface, namespace string) {
	t.Helper()
	wait.For(t, 10*time.Second, 100*time.Millisecond, "the service account is authorized", func() error {
		_, err := cs.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{Limit: 1})
		return err
	})
}

// ContainerID returns a random 64-hex container id, as containerd makes them.
func ContainerID(t testing.TB) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
