package product

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/internal/testenv"
	"github.com/podidentity/podidentity/test/cluster"
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
	values, err := yaml.Marshal(BaseValues("registry.test/podidentity", "v9.9.9", "/var/lib/node/azure.json"))
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
}

func TestImageRef(t *testing.T) {
	for _, tc := range []struct {
		name, manifest, want, wantErr string
	}{
		{name: "tagged", manifest: `[{"Config":"c.json","RepoTags":["ghcr.io/podidentity/podidentity-init:v1"],"Layers":[]}]`, want: "ghcr.io/podidentity/podidentity-init:v1"},
		{name: "untagged", manifest: `[{"Config":"c.json","RepoTags":[],"Layers":[]}]`, wantErr: "carries no tag"},
		{name: "no manifest", wantErr: "has no manifest.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			if tc.manifest != "" {
				_ = tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(tc.manifest))})
				_, _ = tw.Write([]byte(tc.manifest))
			}
			_ = tw.Close()
			p := filepath.Join(t.TempDir(), "image.tar")
			if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ImageRef(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ImageRef = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestSplitRef(t *testing.T) {
	for _, tc := range []struct {
		ref, name, registry, tag string
		wantErr                  bool
	}{
		{ref: "ghcr.io/podidentity/podidentity-init:v1", name: "podidentity-init", registry: "ghcr.io/podidentity", tag: "v1"},
		{ref: "localhost:5000/podidentity-init:dev-1", name: "podidentity-init", registry: "localhost:5000", tag: "dev-1"},
		{ref: "localhost:5000/podidentity-init", name: "podidentity-init", wantErr: true},
		{ref: "ghcr.io/podidentity/podidentity-sidecar:v1", name: "podidentity-init", wantErr: true},
		{ref: "podidentity-init:v1", name: "podidentity-init", wantErr: true},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			registry, tag, err := splitRef(tc.ref, tc.name)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("splitRef(%q, %q) = %q, %q; want an error", tc.ref, tc.name, registry, tag)
				}
				return
			}
			if err != nil || registry != tc.registry || tag != tc.tag {
				t.Fatalf("splitRef(%q, %q) = %q, %q, %v; want %q, %q", tc.ref, tc.name, registry, tag, err, tc.registry, tc.tag)
			}
		})
	}
}
