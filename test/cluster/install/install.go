// Package product installs podidentity on the local test cluster (package cluster) as a user of a private
// cloud would: the images (the binaries of `make images`) and the chart of the working tree pushed to the
// node's registry with bin/imagebuild and bin/helm, signed and verified (publish.go); the chart installed from
// oci:// with the pull Secret the chart documents, the node pulling every product image from the registry;
// the assigner's azure.json on the node, the emulated Azure's CA in a ConfigMap, the emulated ARM endpoint.
// `make demo` and the end-to-end suite share it; a caller adds its own chart values (guard mode, say) on top of
// the base ones.
package install

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/cluster"
)

// Names of what Install creates.
const (
	ReleaseName      = "podidentity"
	Namespace        = "podidentity-system"
	AzureCAConfigMap = "podidentity-azure-ca"
	// AzureCAMountDir is where the assigner finds the emulated Azure's CA (SSL_CERT_FILE=<dir>/ca.crt).
	AzureCAMountDir = "/etc/podidentity/azure-ca"
)

// Images are the product's images, as name:uid[:extra binaries] (the Makefile's IMAGE_SPECS).
func Images() []string {
	return []string{"podidentity-webhook:65532", "podidentity-sidecar:15078", "podidentity-init:0", "podidentity-assigner:65532", "podidentity-node:0:podidentity-cni"}
}

// Options configure Install.
type Options struct {
	// RepoDir is the repository's top directory: bin/images/linux_<arch> (`make images`), bin/imagebuild,
	// bin/helm and charts/podidentity are read from it.
	RepoDir string
	// HelmHome holds helm's cache, configuration and the values files (default <state dir>/helm).
	HelmHome string
	// Values are the caller's chart values, given to helm after BaseValues: helm merges maps and replaces
	// lists and scalars.
	Values map[string]any
	// Log receives progress lines (imported images, created objects, the helm command); nil discards them.
	Log func(format string, args ...any)
}

// Release is an installed chart; Upgrade changes its values.
type Release struct {
	// Registry and Tag are the pushed images' common registry and tag (the chart's image.registry and
	// image.tag; the tag is the chart's appVersion).
	Registry, Tag string
	// Images are the references of the pushed images.
	Images []string
	// Chart and ChartVersion are the pushed chart (oci://...) and its version.
	Chart, ChartVersion string

	cluster *cluster.Cluster
	opts    Options
}

// Install pushes the product images and chart to the node's registry, creates the release namespace with the
// pull Secret and the emulated Azure's CA ConfigMap (existing ones are kept), writes the node's azure.json, and
// runs `helm upgrade --install --wait` from oci:// with BaseValues and opts.Values; it returns when every pod of
// the release is ready.
func Install(ctx context.Context, c *cluster.Cluster, opts Options) (*Release, error) {
	r, err := Prepare(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	return r, r.Upgrade(ctx, opts.Values)
}

// Prepare is Install without helm: the product published and the namespace with its Secret and ConfigMap
// created, for a caller that runs steps of its own (a migration) before the first Upgrade.
func Prepare(ctx context.Context, c *cluster.Cluster, opts Options) (*Release, error) {
	if opts.RepoDir == "" {
		return nil, fmt.Errorf("install.Install: Options.RepoDir is empty: give the repository's top directory")
	}
	if opts.HelmHome == "" {
		opts.HelmHome = filepath.Join(c.StateDir(), "helm")
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	r := &Release{cluster: c, opts: opts}
	if err := r.publish(ctx); err != nil {
		return nil, err
	}
	for _, ref := range r.Images {
		opts.Log("%s", ref)
	}
	opts.Log("%s --version %s", r.Chart, r.ChartVersion)
	if err := createPrerequisites(ctx, c); err != nil {
		return nil, err
	}
	if err := EnsurePullSecret(ctx, c, Namespace); err != nil {
		return nil, err
	}
	opts.Log("%s (azure.json on the node, root's and mode 0600 as on AKS: tenant %s, client %s), ConfigMap %s/%s (the emulated Azure's CA)",
		NodeAzureJSON(c), cluster.TenantID, cluster.AssignerClientID, Namespace, AzureCAConfigMap)
	return r, nil
}

// Upgrade runs `helm upgrade --wait` with BaseValues and values (not the values of the previous Install or
// Upgrade: nil returns to the base values).
func (r *Release) Upgrade(ctx context.Context, values map[string]any) error {
	return r.UpgradeWithFiles(ctx, nil, values)
}

// UpgradeWithFiles is Upgrade with the user's own values files first (`helm upgrade -f <file> ...`): the
// base values and values take precedence over them, as a later -f does.
func (r *Release) UpgradeWithFiles(ctx context.Context, userFiles []string, values map[string]any) error {
	files := [][]byte{}
	for _, v := range []map[string]any{BaseValues(r.Registry, r.Tag, NodeAzureJSON(r.cluster), PullSecret), values} {
		if v == nil {
			continue
		}
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		files = append(files, b)
	}
	home := r.opts.HelmHome
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	args := []string{"upgrade", "--install", ReleaseName, r.Chart, "--version", r.ChartVersion, "--ca-file", r.cluster.ClusterCA(),
		"--namespace", Namespace, "--kubeconfig", r.cluster.KubeconfigPath(), "--wait", "--timeout", "4m"}
	for _, f := range userFiles {
		args = append(args, "--values", f)
	}
	for i, b := range files {
		f := filepath.Join(home, fmt.Sprintf("values-%d.yaml", i))
		if err := os.WriteFile(f, b, 0o644); err != nil {
			return err
		}
		args = append(args, "--values", f)
	}
	r.opts.Log("helm %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(r.opts.RepoDir, "bin", "helm"), args...)
	cmd.Env = append(os.Environ(), r.helmEnv()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("helm upgrade --install (bin/helm comes from `make packaging-tools`): %w\n%s\npods of %s:\n%s",
			err, out, Namespace, PodSummary(ctx, r.cluster, Namespace))
	}
	return r.waitWebhookAnswers(ctx)
}

// waitWebhookAnswers waits until the API server reaches the webhook through its Service. helm's --wait returns
// once the webhook's pods are Ready, but kube-proxy may not route the Service's address yet: a pod created at
// that moment is refused ("failed calling webhook ... connection refused"), or its admission call follows the
// node's default route to whatever answers there (seen: a TLS proxy's certificate). A server-side dry run of a
// pod in an opted-in namespace calls the webhook as a real creation does, and creates nothing.
func (r *Release) waitWebhookAnswers(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(r.cluster.RESTConfig())
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "podidentity-probe-",
		Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}
	if ns, err = cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating a namespace to probe the webhook: %w", err)
	}
	defer func() {
		_ = cs.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), ns.Name, metav1.DeleteOptions{})
	}()
	probe := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: "probe"}}}}
	var last error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		_, last = cs.CoreV1().Pods(ns.Name).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("the API server did not reach the webhook through its Service within 2 minutes after helm's --wait: %w\npods of %s:\n%s",
		last, Namespace, PodSummary(ctx, r.cluster, Namespace))
}

// BaseValues are the values a user of an Azure Stack-like private cloud would give: the images from a private
// registry (pullSecret, when not empty, for the chart's own pods and every injected pod), no cert-manager (the
// webhook signs its own certificate), the node's azure.json (nodeAzureJSON: root's, mode 0600, as on AKS; the
// chart's init container stages it for the non-root assigner), the ARM endpoint, and the CA that signed it.
// Azure AD keeps its public name: the fake cloud's DNS answers it.
func BaseValues(registry, tag, nodeAzureJSON, pullSecret string) map[string]any {
	v := map[string]any{
		// Always: every push reuses the chart's appVersion as the tag, so a node that kept an earlier build
		// under that tag (a cluster reused across runs) would run it with IfNotPresent; the registry is local.
		"image":       map[string]any{"registry": registry, "tag": tag, "pullPolicy": "Always"},
		"certManager": map[string]any{"enabled": false},
		"assigner": map[string]any{
			"credentials":       map[string]any{"azureJSON": "hostPath", "hostPath": nodeAzureJSON},
			"extraArgs":         []string{"--arm-endpoint=" + cluster.ARMEndpoint(), "--arm-audience=https://management.azure.com/"},
			"extraEnv":          []map[string]any{{"name": "SSL_CERT_FILE", "value": AzureCAMountDir + "/ca.crt"}},
			"extraVolumes":      []map[string]any{{"name": "azure-ca", "configMap": map[string]any{"name": AzureCAConfigMap}}},
			"extraVolumeMounts": []map[string]any{{"name": "azure-ca", "mountPath": AzureCAMountDir, "readOnly": true}},
		},
	}
	if pullSecret != "" {
		v["imagePullSecrets"] = []map[string]any{{"name": pullSecret}}
		v["injection"] = map[string]any{"imagePullSecrets": []string{pullSecret}}
	}
	return v
}

// CNIValues switch a release to CNI mode on the local cluster: the node agent chains the plugin into the
// cluster's own CNI directories (the node's runtime reads them), not the host's.
func CNIValues(c *cluster.Cluster) map[string]any {
	return map[string]any{
		"redirect": map[string]any{"mode": "cni"},
		"cni": map[string]any{
			"binDir":     c.CNIBinDir(),
			"confDir":    c.CNIConfDir(),
			"failureDir": filepath.Join(c.StateDir(), "cni", "failures"),
		},
	}
}

// AzureJSON is the assigner's azure.json for the emulated subscription: a service principal with a secret,
// as on clusters without managed identity.
func AzureJSON() ([]byte, error) {
	return json.MarshalIndent(map[string]any{
		"cloud": "AzurePublicCloud", "tenantId": cluster.TenantID, "subscriptionId": cluster.SubscriptionID,
		"resourceGroup": cluster.ResourceGroup, "vmType": "vmss",
		"aadClientId": cluster.AssignerClientID, "aadClientSecret": cluster.AssignerSecret,
	}, "", "  ")
}

// NodeAzureJSON is where the node keeps the assigner's azure.json (AKS: /etc/kubernetes/azure.json).
func NodeAzureJSON(c *cluster.Cluster) string {
	return filepath.Join(c.StateDir(), "node", "etc", "kubernetes", "azure.json")
}

func createPrerequisites(ctx context.Context, c *cluster.Cluster) error {
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return err
	}
	azureJSON, err := AzureJSON()
	if err != nil {
		return err
	}
	// As AKS writes it: root's, mode 0600.
	path := NodeAzureJSON(c)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, azureJSON, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil { // an existing file keeps its mode on WriteFile
		return err
	}
	ca, err := os.ReadFile(c.FakeCloudCA())
	if err != nil {
		return err
	}
	keep := func(err error) error {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); keep(err) != nil {
		return fmt.Errorf("creating namespace %s: %w", Namespace, err)
	}
	if _, err := cs.CoreV1().ConfigMaps(Namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: AzureCAConfigMap},
		Data: map[string]string{"ca.crt": string(ca)}}, metav1.CreateOptions{}); keep(err) != nil {
		return fmt.Errorf("creating ConfigMap %s/%s: %w", Namespace, AzureCAConfigMap, err)
	}
	return nil
}

// PodSummary lists the pods of ns with their phase and readiness, one a line, for progress and errors.
func PodSummary(ctx context.Context, c *cluster.Cluster, ns string) string {
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return err.Error()
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		ready := 0
		for _, st := range p.Status.ContainerStatuses {
			if st.Ready {
				ready++
			}
		}
		fmt.Fprintf(&b, "%-50s %-9s %d/%d ready\n", p.Name, p.Status.Phase, ready, len(p.Spec.Containers))
	}
	return b.String()
}
