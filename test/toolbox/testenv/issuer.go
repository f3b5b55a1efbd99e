package testenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Issuer is a running control plane whose API server is a service account token issuer with OIDC discovery
// reachable without credentials, as workload identity federation needs it: Azure AD (here the emulator in
// test/emulators/imds) fetches <URL>.well-known/openid-configuration and /openid/v1/jwks and checks the projected
// tokens' signatures with those keys.
type Issuer struct {
	*Env
	// URL is the issuer, as in the tokens' iss claim (envtest's: https://127.0.0.1:<port>/).
	URL string
	// Anonymous is an HTTP client that trusts the API server's certificate authority and sends no
	// credentials, as an OIDC relying party does.
	Anonymous *http.Client
	clientset *kubernetes.Clientset
}

// StartIssuer starts a control plane (Start) whose API server publishes its JWKS at a loopback jwks_uri
// (--service-account-jwks-uri: without it, the API server advertises its non-loopback external address), and
// lets unauthenticated clients read the discovery document and the keys (the ClusterRole
// system:service-account-issuer-discovery bound to system:unauthenticated, as a cluster whose issuer Azure AD
// must reach is set up).
func StartIssuer(t testing.TB) *Issuer {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs kube-apiserver and etcd; run without -short (make test builds them)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	env := &envtest.Environment{}
	api := env.ControlPlane.GetAPIServer()
	api.SecureServing.Address, api.SecureServing.Port = "127.0.0.1", strconv.Itoa(port)
	issuer := fmt.Sprintf("https://127.0.0.1:%d/", port)
	api.Configure().Set("service-account-jwks-uri", issuer+"openid/v1/jwks")
	e := Start(t, env)
	if strings.TrimSuffix(e.Config.Host, "/")+"/" != issuer {
		t.Fatalf("the API server serves at %s, not at its issuer %s", e.Config.Host, issuer)
	}
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "podidentity-test-anonymous-issuer-discovery"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:unauthenticated"}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
		t.Fatalf("allowing anonymous issuer discovery: %v", err)
	}
	anon, err := rest.HTTPClientFor(rest.AnonymousClientConfig(e.Config))
	if err != nil {
		t.Fatal(err)
	}
	return &Issuer{Env: e, URL: issuer, Anonymous: anon, clientset: cs}
}

// Subject is the subject of a service account's tokens: system:serviceaccount:<namespace>:<name>.
func Subject(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// Token returns a token of the service account namespace/name (created, with its namespace, when missing)
// for audience, valid for seconds (the API server's minimum is 600), from the TokenRequest API: the same
// kind of token the kubelet projects into a pod.
func (i *Issuer) Token(t testing.TB, namespace, name, audience string, seconds int64) string {
	t.Helper()
	ctx := context.Background()
	if _, err := i.clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := i.clientset.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	tr, err := i.clientset.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &seconds}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for service account %s/%s: %v", namespace, name, err)
	}
	return tr.Status.Token
}
