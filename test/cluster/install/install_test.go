package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// TestBaseValuesRender renders the chart with the base values (helm template, strict schema) and checks the
// assigner gets what the emulated Azure needs: azure.json from the node (staged), the ARM endpoint, and the fake
// cloud's CA mounted and named by SSL_CERT_FILE.
func TestBaseValuesRender(t *testing.T) {
	root := testenv.RepoRoot()
	helm := filepath.Join(root, "bin", "helm")
	if _, err := os.Stat(helm); err != nil {
		t.Skip("bin/helm missing: make packaging-tools")
	}
	values, err := yaml.Marshal(BaseValues("registry.test/podidentity", "v9.9.9", "/var/lib/node/azure.json", PullSecret))
	if err != nil {
		t.Fatal(err)
	}
	vf := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(vf, values, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(helm, "template", ReleaseName, filepath.Join(root, "charts", "podidentity"), "--namespace", Namespace, "--values", vf, "--kube-version", "v1.37.2")
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm template with the base values: %v\n%s", err, out)
	}
	var assigner *appsv1.Deployment
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var d appsv1.Deployment
		if yaml.Unmarshal([]byte(doc), &d) == nil && d.Kind == "Deployment" && strings.HasSuffix(d.Name, "assigner") {
			assigner = &d
		}
	}
	if assigner == nil {
		t.Fatalf("no assigner Deployment rendered:\n%s", out)
	}
	c := assigner.Spec.Template.Spec.Containers[0]
	if want := "registry.test/podidentity/podidentity-assigner:v9.9.9"; c.Image != want {
		t.Errorf("image %s, want %s", c.Image, want)
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--arm-endpoint=" + cluster.ARMEndpoint(), "--azure-config=/var/run/podidentity/azure/azure.json"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %s", args, want)
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["SSL_CERT_FILE"] != AzureCAMountDir+"/ca.crt" {
		t.Errorf("SSL_CERT_FILE=%q, want %s/ca.crt", env["SSL_CERT_FILE"], AzureCAMountDir)
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (m.Name == "azure-ca" && m.MountPath == AzureCAMountDir)
	}
	sources := map[string]string{}
	for _, v := range assigner.Spec.Template.Spec.Volumes {
		switch {
		case v.ConfigMap != nil:
			sources[v.Name] = "configmap/" + v.ConfigMap.Name
		case v.HostPath != nil:
			sources[v.Name] = "hostPath/" + v.HostPath.Path
		}
	}
	if !mounted || sources["azure-ca"] != "configmap/"+AzureCAConfigMap || sources["azure-json"] != "hostPath//var/lib/node/azure.json" {
		t.Errorf("volumes %v, mounts %+v: want the CA ConfigMap mounted at %s and azure.json from the node", sources, c.VolumeMounts, AzureCAMountDir)
	}
	if inits := assigner.Spec.Template.Spec.InitContainers; len(inits) != 1 || inits[0].Name != "stage-azure-json" {
		t.Errorf("init containers %+v: want the one that stages the node's root-only azure.json", inits)
	}
	if ps := assigner.Spec.Template.Spec.ImagePullSecrets; len(ps) != 1 || ps[0].Name != PullSecret {
		t.Errorf("assigner pull secrets %+v, want %s", ps, PullSecret)
	}
	if !strings.Contains(string(out), "--image-pull-secrets="+PullSecret) {
		t.Errorf("the webhook is not told to give injected pods %s:\n%s", PullSecret, out)
	}
}

func TestChartVersions(t *testing.T) {
	version, appVersion, err := chartVersions(filepath.Join(testenv.RepoRoot(), "charts", "podidentity"))
	if err != nil || version == "" || appVersion == "" {
		t.Fatalf("chartVersions = %q, %q, %v", version, appVersion, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Chart.yaml"), []byte("version: 1.0.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := chartVersions(dir); err == nil {
		t.Error("a chart without appVersion was accepted")
	}
}
