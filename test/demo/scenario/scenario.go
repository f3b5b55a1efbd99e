// Package scenario is `make demo`: from nothing to a managed-identity token in a pod, one printed step at a
// time. On this machine it starts the local cluster with its emulated Azure (test/cluster), imports the
// images, installs the helm chart as a user would, and runs a pod whose app is the real Azure SDK for Go
// (azidentity.ManagedIdentityCredential) asking 169.254.169.254 for a token. Against a user's cluster
// (a kubeconfig) it runs only the in-cluster part.
package scenario

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/apps"
	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/cluster/install"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/fakecloud"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// Names the demo creates.
const (
	ReleaseNamespace = install.Namespace
	DemoNamespace    = "podidentity-demo"
	IdentityName     = "demo-identity"
	BindingSelector  = "demo"
	PodName          = "demo-app"
	// ServiceAccount is the demo pod's service account; a federated identity's credential names it.
	ServiceAccount = "demo-app"
	// issuerDiscoveryBinding lets anonymous clients (Azure AD) read the local cluster's issuer.
	issuerDiscoveryBinding = "podidentity-demo-issuer-discovery"
)

// The token backends of the demo's identity (the AzureIdentity's podidentity.io/backend annotation).
const (
	BackendNode      = "node"
	BackendFederated = "federated"
)

// Options configure Run.
type Options struct {
	// Kubeconfig of a user's cluster; empty runs everything on this machine.
	Kubeconfig string
	// Keep leaves the local cluster (or, on a user's cluster, the demo namespace) in place.
	Keep bool
	// For a user's cluster: a pullable image of the Go client (test/apps/goclient) and the user-assigned
	// identity to bind (its ARM resource id and client id); the chart must be installed already.
	AppImage, IdentityResourceID, IdentityClientID string
	// Timeout bounds the wait for the token (default 3 minutes).
	Timeout time.Duration
	// Out receives the steps.
	Out io.Writer
	// Cluster configures the local cluster.
	Cluster cluster.Options
	// Mode is the chart's redirect.mode on the local cluster: "init" (default) or "cni", where the demo
	// namespace also enforces the Pod Security level restricted.
	Mode string
	// Backend is how the sidecar gets the identity's tokens: "node" (default: the assigner attaches the identity
	// to the node's scale set, the sidecar asks the node's IMDS) or "federated" (nothing is attached; the sidecar
	// exchanges the pod's service account token at Azure AD).
	Backend string
	// TenantID is the federated identity's Azure AD tenant, for a user's cluster (the local one has its own).
	TenantID string
}

// Run runs the scenario.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Minute
	}
	began := time.Now()
	s := &steps{out: opts.Out, began: began}
	defer func() {
		if err == nil {
			s.say("done in %.1fs", time.Since(began).Seconds())
		}
	}()
	switch opts.Mode {
	case "":
		opts.Mode = "init"
	case "init", "cni":
	default:
		return fmt.Errorf("--mode=%q: use init or cni", opts.Mode)
	}
	switch opts.Backend {
	case "":
		opts.Backend = BackendNode
	case BackendNode, BackendFederated:
	default:
		return fmt.Errorf("--backend=%q: use %s or %s", opts.Backend, BackendNode, BackendFederated)
	}
	if opts.Kubeconfig != "" {
		return runOnUserCluster(ctx, s, opts)
	}
	return runLocal(ctx, s, opts)
}

func runLocal(ctx context.Context, s *steps, opts Options) (err error) {
	opts.Cluster.Log = prefixWriter{s}
	s.step("start the local cluster and the emulated Azure (IMDS on %s:80, ARM and Azure AD over HTTPS on %s)", cluster.IMDSAddress, cluster.NodeIP)
	c, err := cluster.Start(ctx, opts.Cluster)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.say("logs: %s (components), %s (pods); run with --keep to look at the cluster",
				filepath.Join(c.StateDir(), "logs"), filepath.Join(c.StateDir(), "pod-logs"))
		}
		if opts.Keep {
			c.Release()
			s.say("cluster kept: export KUBECONFIG=%s ; stop it with `go run ./test/demo --down`", c.KubeconfigPath())
			return
		}
		s.step("tear down the cluster")
		if stopErr := c.Stop(); stopErr != nil {
			s.say("teardown: %v", stopErr)
		}
	}()
	cfg := c.RESTConfig()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	s.say("node %s (%s), providerID %s", c.NodeName(), c.NodeIP(), cluster.ProviderID)

	s.step("import the demo app's image into the node's containerd")
	repoDir := opts.Cluster.RepoDir
	if repoDir == "" {
		repoDir = testenv.RepoRoot()
	}
	appTar := filepath.Join(c.StateDir(), "cache", "goclient.tar")
	appImage, err := apps.BuildGoClientImage(ctx, appTar)
	if err != nil {
		return err
	}
	if err := c.ImportImage(ctx, appTar); err != nil {
		return err
	}
	s.say("%s (the demo app: azidentity.ManagedIdentityCredential)", appImage)

	s.step("push the product images and chart to the node's registry, and install the chart from oci:// (no cert-manager; the assigner authenticates to the emulated Azure AD with a client secret; redirect.mode=%s)", opts.Mode)
	values := map[string]any{}
	if opts.Mode == "cni" {
		maps.Copy(values, install.CNIValues(c))
	}
	if opts.Backend == BackendFederated {
		// The sidecars reach the fake cloud's Azure AD: they trust its CA, copied into the demo namespace below.
		maps.Copy(values, install.FederatedSidecarValues())
	}
	if _, err := install.Install(ctx, c, install.Options{RepoDir: repoDir, Log: s.say, Values: values}); err != nil {
		return err
	}
	if opts.Mode == "cni" {
		b, err := os.ReadFile(c.PrimaryCNIConfig())
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "podidentity-cni") {
			return fmt.Errorf("CNI mode: the node agent has not chained podidentity-cni into %s yet", c.PrimaryCNIConfig())
		}
		s.say("the node agent chained podidentity-cni into %s", c.PrimaryCNIConfig())
	}
	s.say("installed; pods of %s:", ReleaseNamespace)
	for _, line := range strings.Split(strings.TrimRight(install.PodSummary(ctx, c, ReleaseNamespace), "\n"), "\n") {
		s.say("  %s", line)
	}
	identityID := cluster.UserAssignedIdentityID(IdentityName)
	admin := fakecloud.Admin{Base: "http://" + cluster.IMDSAdminAddress}
	w := world{appImage: appImage, identityID: identityID, clientID: arm.ClientIDOf(identityID), tenantID: cluster.TenantID,
		attached: func(ctx context.Context) string {
			if opts.Backend == BackendFederated {
				return attachedOnNode(ctx, admin, "no identity attached to the scale set (a federated identity never is)")
			}
			return attachedOnNode(ctx, admin, "no identity attached to the scale set yet")
		}}
	// The product's images come from the node's registry with authentication: the demo namespace needs the
	// pull Secret the webhook names in every injected pod (docs/install.md, "From your own registry").
	w.prepareNamespace = func(ctx context.Context, ns string) error {
		s.say("pull Secret %s/%s (the node's registry %s)", ns, install.PullSecret, cluster.RegistryHost)
		if err := install.EnsurePullSecret(ctx, c, ns); err != nil {
			return err
		}
		if opts.Backend != BackendFederated {
			return nil
		}
		s.say("ConfigMap %s/%s: the fake cloud's CA, which the sidecar trusts for Azure AD", ns, install.AzureCAConfigMap)
		return install.CopyAzureCA(ctx, cs, ns)
	}
	if opts.Backend == BackendFederated {
		s.step("let the emulated Azure AD read the cluster's service account issuer, and give the identity a federated credential")
		issuer, err := install.OpenIssuerDiscovery(ctx, cs, issuerDiscoveryBinding)
		if err != nil {
			return err
		}
		subject := "system:serviceaccount:" + DemoNamespace + ":" + ServiceAccount
		if err := admin.RegisterFederatedApp(ctx, cluster.TenantID, w.clientID, issuer, subject); err != nil {
			return err
		}
		s.say("issuer  %s (ClusterRoleBinding %s: anonymous clients may read its discovery document and keys)", issuer, issuerDiscoveryBinding)
		s.say("subject %s", subject)
		// Proof that federation needs no node attach: ARM never writes the identity to the scale set.
		w.afterToken = func(ctx context.Context) error {
			history, err := admin.History(ctx)
			if err != nil {
				return err
			}
			for _, ch := range history {
				for _, id := range ch.Identities {
					if strings.EqualFold(id, identityID) {
						return fmt.Errorf("ARM wrote the federated identity to the node's scale set at %s: %v", ch.Time, ch.Identities)
					}
				}
			}
			counts, err := admin.Counts(ctx, w.clientID)
			if err != nil {
				return err
			}
			s.say("ARM writes of this identity to the node's scale set: 0 (of %d identity changes); Azure AD exchanges of service account tokens: %d",
				len(history), counts.Exchanges)
			return nil
		}
	}
	return runScenario(ctx, s, cfg, opts, w)
}

// world is what the in-cluster part of the scenario is given about where it runs.
type world struct {
	// appImage is the Go client's image; identityID, clientID and tenantID name the identity to bind.
	appImage, identityID, clientID, tenantID string
	// attached, when not nil, describes what the node's IMDS serves (the local cluster's emulator).
	attached func(context.Context) string
	// prepareNamespace, when not nil, is given the demo namespace once it exists (the local cluster's pull
	// Secret and CA).
	prepareNamespace func(context.Context, string) error
	// afterToken, when not nil, runs once the app has its token (the local cluster's checks of ARM).
	afterToken func(context.Context) error
}

func runOnUserCluster(ctx context.Context, s *steps, opts Options) error {
	s.step("use the cluster of %s (skipped: local cluster, emulated Azure, image import, chart install)", opts.Kubeconfig)
	switch {
	case opts.Backend == BackendNode && (opts.AppImage == "" || opts.IdentityResourceID == "" || opts.IdentityClientID == ""):
		return errors.New("on your own cluster give --app-image (the Go client image, pushed to a registry your nodes pull from), --identity-resource-id and --identity-client-id (a user-assigned identity the assigner may attach), and install the chart first (docs/install.md); or unset KUBECONFIG to run everything on this machine")
	case opts.Backend == BackendFederated && (opts.AppImage == "" || opts.IdentityClientID == "" || opts.TenantID == ""):
		return fmt.Errorf("on your own cluster with --backend=federated give --app-image, --identity-client-id and --tenant-id of an identity with a federated credential for your cluster's OIDC issuer and subject system:serviceaccount:%s:%s (docs/install.md, \"Federated identities\"), and install the chart first; or unset KUBECONFIG to run everything on this machine", DemoNamespace, ServiceAccount)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s: %w", opts.Kubeconfig, err)
	}
	err = runScenario(ctx, s, cfg, opts, world{appImage: opts.AppImage, identityID: opts.IdentityResourceID, clientID: opts.IdentityClientID, tenantID: opts.TenantID})
	if !opts.Keep {
		s.step("delete namespace %s", DemoNamespace)
		cs, cerr := kubernetes.NewForConfig(cfg)
		if cerr == nil {
			cerr = cs.CoreV1().Namespaces().Delete(context.Background(), DemoNamespace, metav1.DeleteOptions{})
		}
		if cerr != nil {
			s.say("deleting namespace %s: %v", DemoNamespace, cerr)
		}
	}
	return err
}

// runScenario is the part that runs on any cluster: an opted-in namespace, an AzureIdentity and its binding,
// the app pod, and the wait for its token.
func runScenario(ctx context.Context, s *steps, cfg *rest.Config, opts Options, w world) error {
	appImage, identityID, clientID := w.appImage, w.identityID, w.clientID
	federated := opts.Backend == BackendFederated
	cl, err := client.New(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	labels := map[string]string{contract.NamespaceInjectionLabel: "enabled"}
	if opts.Mode == "cni" {
		// CNI mode's injected containers are unprivileged: the namespace can enforce the strictest level.
		labels["pod-security.kubernetes.io/enforce"] = "restricted"
	}
	s.step("create namespace %s labelled %v", DemoNamespace, labels)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DemoNamespace, Labels: labels}}
	if err := createOrKeep(ctx, cl, ns); err != nil {
		return err
	}
	if w.prepareNamespace != nil {
		if err := w.prepareNamespace(ctx, DemoNamespace); err != nil {
			return err
		}
	}
	if err := createOrKeep(ctx, cl, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ServiceAccount, Namespace: DemoNamespace}}); err != nil {
		return err
	}

	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: IdentityName, Namespace: DemoNamespace},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: identityID, ClientID: clientID}}
	b := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: IdentityName + "-binding", Namespace: DemoNamespace},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: IdentityName, Selector: BindingSelector}}
	if federated {
		s.step("create AzureIdentity %s (annotation %s: %s) and its AzureIdentityBinding (selector %s, annotation %s: %s)", IdentityName,
			aadv1.BackendAnnotation, aadv1.BackendFederated, BindingSelector, aadv1.ServiceAccountsAnnotation, ServiceAccount)
		id.Annotations = map[string]string{aadv1.BackendAnnotation: aadv1.BackendFederated}
		id.Spec.TenantID = w.tenantID
		b.Annotations = map[string]string{aadv1.ServiceAccountsAnnotation: ServiceAccount}
		s.say("tenantID   %s", w.tenantID)
	} else {
		s.step("create AzureIdentity %s (type 0, user-assigned) and its AzureIdentityBinding (selector %s)", IdentityName, BindingSelector)
	}
	if identityID != "" {
		s.say("resourceID %s", identityID)
	}
	s.say("clientID   %s", clientID)
	if err := createOrKeep(ctx, cl, id); err != nil {
		return err
	}
	if err := createOrKeep(ctx, cl, b); err != nil {
		return err
	}

	s.step("run pod %s/%s (label aadpodidbinding=%s, service account %s), the app asks 169.254.169.254 for a token", DemoNamespace, PodName, BindingSelector, ServiceAccount)
	_ = cs.CoreV1().Pods(DemoNamespace).Delete(ctx, PodName, metav1.DeleteOptions{})
	if err := waitGone(ctx, cs, DemoNamespace, PodName); err != nil {
		return err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: PodName, Namespace: DemoNamespace, Labels: map[string]string{"aadpodidbinding": BindingSelector}},
		Spec: corev1.PodSpec{ServiceAccountName: ServiceAccount, Containers: []corev1.Container{{
			Name: "app", Image: appImage, ImagePullPolicy: corev1.PullIfNotPresent,
			Env: []corev1.EnvVar{{Name: "AZURE_CLIENT_ID", Value: clientID}, {Name: "MODE", Value: "until-ok"}, {Name: "INTERVAL", Value: "1s"}},
			// An app as the Pod Security level restricted wants it (CNI mode's demo namespace enforces it).
			SecurityContext: &corev1.SecurityContext{RunAsNonRoot: ptr(true), AllowPrivilegeEscalation: ptr(false),
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
		}}, SecurityContext: &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}},
	}
	created, err := cs.CoreV1().Pods(DemoNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating the demo pod (is the webhook running? %s pods must be Ready): %w", ReleaseNamespace, err)
	}
	s.say("admitted with init containers %v, containers %v; annotation %s=%s", names(created.Spec.InitContainers), names(created.Spec.Containers),
		contract.IdentitiesAnnotation, created.Annotations[contract.IdentitiesAnnotation])
	if len(created.Spec.InitContainers) == 0 {
		return fmt.Errorf("the webhook did not inject the pod (no init container): check namespace %s's label and the webhook in %s", DemoNamespace, ReleaseNamespace)
	}

	s.step("wait for the token")
	tok, err := waitForToken(ctx, cs, s, opts.Timeout, w.attached)
	if err != nil {
		return err
	}
	s.say("token after %d attempt(s); expires %s", tok.Attempt, tok.ExpiresOn)
	s.say("claims:")
	keys := make([]string, 0, len(tok.Claims))
	for k := range tok.Claims {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, _ := json.Marshal(tok.Claims[k])
		s.say("  %-10s %s", k, v)
	}
	if got := fmt.Sprint(tok.Claims["appid"]); !strings.EqualFold(got, clientID) {
		return fmt.Errorf("the token is for application %s, not the bound identity's %s", got, clientID)
	}
	if got := fmt.Sprint(tok.Claims["xms_mirid"]); !federated && w.attached != nil && !strings.EqualFold(got, identityID) {
		return fmt.Errorf("the token is for %s, not the bound identity %s", got, identityID)
	}
	if w.afterToken != nil {
		return w.afterToken(ctx)
	}
	return nil
}

// attempt is one line of the Go client's output (test/apps README).
type attempt struct {
	OK        bool           `json:"ok"`
	Claims    map[string]any `json:"claims"`
	ExpiresOn string         `json:"expiresOn"`
	Error     string         `json:"error"`
	Attempt   int            `json:"attempt"`
}

// waitForToken reads the app's log until an attempt succeeded, printing each new failure once and, where
// known, what the node's IMDS has attached.
func waitForToken(ctx context.Context, cs kubernetes.Interface, s *steps, timeout time.Duration, attached func(context.Context) string) (attempt, error) {
	deadline := time.Now().Add(timeout)
	lastErr, lastAttached, lastPhase := "", "", ""
	for {
		p, err := cs.CoreV1().Pods(DemoNamespace).Get(ctx, PodName, metav1.GetOptions{})
		if err == nil && string(p.Status.Phase) != lastPhase {
			lastPhase = string(p.Status.Phase)
			s.say("pod %s", lastPhase)
		}
		if attached != nil {
			if a := attached(ctx); a != lastAttached {
				lastAttached = a
				s.say("node IMDS: %s", a)
			}
		}
		raw, err := cs.CoreV1().Pods(DemoNamespace).GetLogs(PodName, &corev1.PodLogOptions{Container: "app"}).DoRaw(ctx)
		if err == nil {
			sc := bufio.NewScanner(strings.NewReader(string(raw)))
			for sc.Scan() {
				var a attempt
				if json.Unmarshal(sc.Bytes(), &a) != nil {
					continue
				}
				if a.OK {
					return a, nil
				}
				if a.Error != lastErr {
					lastErr = a.Error
					s.say("attempt %d: %s", a.Attempt, firstLine(a.Error))
				}
			}
		}
		if time.Now().After(deadline) {
			return attempt{}, fmt.Errorf("no token within %s (last error: %s); look at the sidecar's log and the assigner's (%s)", timeout, lastErr, ReleaseNamespace)
		}
		select {
		case <-ctx.Done():
			return attempt{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// attachedOnNode asks the fake cloud's admin API which identities the node's IMDS serves; none is what it
// says when there is none.
func attachedOnNode(ctx context.Context, admin fakecloud.Admin, none string) string {
	ids, err := admin.Attached(ctx)
	if err != nil {
		return "unknown: " + err.Error()
	}
	if len(ids) == 0 {
		return none
	}
	var out []string
	for _, id := range ids {
		out = append(out, id.ResourceID[strings.LastIndex(id.ResourceID, "/")+1:])
	}
	return "attached by the assigner through ARM: " + strings.Join(out, ", ")
}

func createOrKeep(ctx context.Context, cl client.Client, obj client.Object) error {
	if err := cl.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating %T %s: %w", obj, obj.GetName(), err)
	}
	return nil
}

func waitGone(ctx context.Context, cs kubernetes.Interface, ns, name string) error {
	for i := 0; i < 120; i++ {
		if _, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("pod %s/%s from an earlier run is still terminating", ns, name)
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// steps prints numbered steps, with the time since the demo began, and indented details.
type steps struct {
	out   io.Writer
	n     int
	began time.Time
}

func (s *steps) step(format string, args ...any) {
	s.n++
	fmt.Fprintf(s.out, "\n[%d] %s  (t=%.1fs)\n", s.n, fmt.Sprintf(format, args...), time.Since(s.began).Seconds())
}

func (s *steps) say(format string, args ...any) {
	fmt.Fprintf(s.out, "    %s\n", fmt.Sprintf(format, args...))
}

// prefixWriter indents the cluster's progress lines under the current step.
type prefixWriter struct{ s *steps }

func (w prefixWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.s.say("%s", line)
	}
	return len(p), nil
}

func ptr[T any](v T) *T { return &v }
