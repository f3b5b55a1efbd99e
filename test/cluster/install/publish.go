package install

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/toolbox/registry"
)

// PullSecret is the kubernetes.io/dockerconfigjson Secret, in the release namespace and in every namespace
// EnsurePullSecret is given, with the node registry's credentials: the chart's imagePullSecrets and
// injection.imagePullSecrets name it.
const PullSecret = "podidentity-pull"

// RegistryPath is where the product goes in the node's registry: <RegistryHost>/podidentity/<image>, the
// chart at oci://<RegistryHost>/podidentity/charts/podidentity.
const RegistryPath = "podidentity"

// publish pushes the product as `make release` does, for this machine's architecture only: the images from
// bin/images/linux_<arch> (signed with a key of the cluster's state directory, with SBOMs) then verified, and
// the chart packaged, pushed, signed and verified. It sets r.Registry, r.Tag, r.Images, r.Chart and r.ChartVersion.
func (r *Release) publish(ctx context.Context) error {
	c, root := r.cluster, r.opts.RepoDir
	chartDir := filepath.Join(root, "charts", "podidentity")
	version, appVersion, err := chartVersions(chartDir)
	if err != nil {
		return err
	}
	r.Registry, r.Tag = cluster.RegistryHost+"/"+RegistryPath, appVersion
	r.Chart, r.ChartVersion = "oci://"+r.Registry+"/charts/podidentity", version
	imagebuild := filepath.Join(root, "bin", "imagebuild")
	key := filepath.Join(c.StateDir(), "signing", "cosign.key")
	if _, err := os.Stat(key); err != nil {
		if err := r.run(ctx, imagebuild, "keygen", "--key", key); err != nil {
			return err
		}
	}
	common := []string{"--registry", r.Registry, "--chart", chartDir, "--arch", runtime.GOARCH, "--image", strings.Join(Images(), " ")}
	if err := r.run(ctx, imagebuild, append([]string{"push", "--bin-dir", filepath.Join(root, "bin", "images"), "--key", key}, common...)...); err != nil {
		return fmt.Errorf("%w (the binaries come from `make images`, bin/imagebuild from `make imagebuild`)", err)
	}
	if err := r.run(ctx, imagebuild, append([]string{"verify", "--key", key + ".pub"}, common...)...); err != nil {
		return err
	}
	r.Images = nil
	for _, spec := range Images() {
		r.Images = append(r.Images, r.Registry+"/"+strings.SplitN(spec, ":", 2)[0]+":"+r.Tag)
	}
	helm := filepath.Join(root, "bin", "helm")
	pkgDir := filepath.Join(r.opts.HelmHome, "package")
	if err := r.run(ctx, helm, "package", chartDir, "--destination", pkgDir); err != nil {
		return err
	}
	if err := r.run(ctx, helm, "push", filepath.Join(pkgDir, "podidentity-"+version+".tgz"), "oci://"+r.Registry+"/charts", "--ca-file", c.ClusterCA()); err != nil {
		return err
	}
	chartRef := strings.TrimPrefix(r.Chart, "oci://") + ":" + version
	if err := r.run(ctx, imagebuild, "sign", "--key", key, "--ref", chartRef); err != nil {
		return err
	}
	return r.run(ctx, imagebuild, "verify-signature", "--key", key+".pub", "--ref", chartRef)
}

// helmEnv keeps helm's files in HelmHome and reads the registry's credentials from the cluster's Docker
// config (the registry process writes it), as `helm registry login` would have written them.
func (r *Release) helmEnv() []string {
	home := r.opts.HelmHome
	return []string{"HELM_CACHE_HOME=" + filepath.Join(home, "cache"), "HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"HELM_REGISTRY_CONFIG=" + filepath.Join(r.cluster.RegistryDockerConfig(), "config.json")}
}

// run runs imagebuild or helm with the registry's credentials and CA, and logs the command.
func (r *Release) run(ctx context.Context, bin string, args ...string) error {
	r.opts.Log("%s %s", filepath.Base(bin), strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), append(r.helmEnv(),
		"DOCKER_CONFIG="+r.cluster.RegistryDockerConfig(), "SSL_CERT_FILE="+r.cluster.ClusterCA())...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), args[0], err, out)
	}
	return nil
}

// chartVersions reads version and appVersion of the chart.
func chartVersions(chartDir string) (version, appVersion string, err error) {
	data, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", "", err
	}
	var chart struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &chart); err != nil {
		return "", "", fmt.Errorf("%s/Chart.yaml: %w", chartDir, err)
	}
	if chart.Version == "" || chart.AppVersion == "" {
		return "", "", fmt.Errorf("%s/Chart.yaml lacks version or appVersion", chartDir)
	}
	return chart.Version, chart.AppVersion, nil
}

// EnsurePullSecret creates the pull Secret PullSecret in ns (kept when it exists), with the credentials of
// the cluster's registry. Every namespace whose pods run product images needs it: the release namespace
// (Prepare creates it) and every opted-in namespace, whose pods the webhook gives the name.
func EnsurePullSecret(ctx context.Context, c *cluster.Cluster, ns string) error {
	user, password, err := c.RegistryAuth()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: PullSecret, Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: registry.DockerConfigJSON(cluster.RegistryHost, user, password)},
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating pull Secret %s/%s: %w", ns, PullSecret, err)
	}
	return nil
}
