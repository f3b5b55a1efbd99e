package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podidentity/podidentity/test/cluster"
)

// What a federated identity needs on the local cluster, beyond what Install sets up: the end-to-end suite and
// `make demo --backend=federated` share these.
//   - Azure AD (the fake cloud's) reads the cluster's service account issuer: its discovery document and keys
//     at https://<NodeIP>:<APIServerPort> (test/cluster), readable by anonymous clients (OpenIssuerDiscovery).
//   - The sidecar trusts the fake cloud's CA (FederatedSidecarValues, and the CA ConfigMap in the pod's
//     namespace: CopyAzureCA) and skips Azure AD instance discovery, which the emulator does not serve.
//   - The application is registered in the fake cloud's Azure AD with a federated credential
//     (fakecloud.Admin.RegisterFederatedApp).

// ErrIssuerUnreachable means the cluster's service account issuer is an in-cluster name that the fake cloud's
// Azure AD cannot fetch.
var ErrIssuerUnreachable = errors.New("the cluster's service account issuer is not reachable by the fake cloud's Azure AD")

// FederatedSidecarValues are the chart values under which injected sidecars reach the fake cloud's Azure AD:
// they trust its CA (the ConfigMap AzureCAConfigMap in the pod's namespace) and skip instance discovery.
func FederatedSidecarValues() map[string]any {
	return map[string]any{"sidecar": map[string]any{"aadDisableInstanceDiscovery": true, "caBundleConfigMap": AzureCAConfigMap}}
}

// CopyAzureCA copies the fake cloud's CA ConfigMap from the release's namespace into ns, where the sidecars of
// ns mount it (FederatedSidecarValues). An existing copy is replaced.
func CopyAzureCA(ctx context.Context, cs kubernetes.Interface, ns string) error {
	ca, err := cs.CoreV1().ConfigMaps(Namespace).Get(ctx, AzureCAConfigMap, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("the fake cloud's CA ConfigMap %s/%s (made by Install): %w", Namespace, AzureCAConfigMap, err)
	}
	cp := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: AzureCAConfigMap}, Data: map[string]string{"ca.crt": ca.Data["ca.crt"]}}
	_, err = cs.CoreV1().ConfigMaps(ns).Create(ctx, cp, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cp, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("copying the fake cloud's CA into namespace %s: %w", ns, err)
	}
	return nil
}

// OpenIssuerDiscovery returns the cluster's service account issuer (from its discovery document) and lets
// anonymous clients read that document and the keys, as Azure AD must, through the ClusterRoleBinding
// bindingName to system:service-account-issuer-discovery (delete it to close discovery again). It returns
// ErrIssuerUnreachable, and binds nothing, when the issuer is an in-cluster name.
func OpenIssuerDiscovery(ctx context.Context, cs kubernetes.Interface, bindingName string) (string, error) {
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("reading the cluster's OIDC discovery document: %w", err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return "", fmt.Errorf("the cluster's OIDC discovery document %s: %w", raw, err)
	}
	if doc.Issuer == "" {
		return "", fmt.Errorf("the cluster's OIDC discovery document %s has no issuer", raw)
	}
	if strings.Contains(doc.Issuer, ".svc") {
		return "", fmt.Errorf("%w: %s; the local cluster's issuer must be https://%s:%d (test/cluster)", ErrIssuerUnreachable, doc.Issuer, cluster.NodeIP, cluster.APIServerPort)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: bindingName},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:unauthenticated"}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("letting anonymous clients read the service account issuer's discovery document: %w", err)
	}
	return doc.Issuer, nil
}
