package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/apps"
	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/cluster/install"
)

var (
	keepCluster  = flag.Bool("e2e.keep", false, "leave the cluster running after the suite, for kubectl --kubeconfig bin/cluster/kubeconfig/admin.kubeconfig (the next run reuses it)")
	writeFigures = flag.Bool("e2e.write-benchmarks", true, "write the measured figures into the repository's BENCHMARKS.md (the marked parts of its section End to end)")
)

// TestE2E is the whole suite on one cluster: it starts the cluster (test/cluster: real kubelet, containerd,
// kube-proxy and control plane, an emulated Azure, the podidentity chart), imports the app images, and runs
// every scenario as a subtest in its own namespace. One top-level test owns the cluster, so that there is no
// package-level state and `go test -run 'TestE2E/webhook'` still brings up exactly one cluster.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the end-to-end suite in -short mode: it starts a real single-node cluster (about 1-2 minutes)")
	}
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("skipping the end-to-end suite: it needs root on Linux (kubelet, containerd, network namespaces); run `sudo -E make e2e`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	e := setUp(ctx, t)

	scenarios := []struct {
		name string
		run  func(*testing.T)
	}{
		{"go client gets its bound identity, nothing else", func(t *testing.T) { e.scenarioTokens(t, "go", e.goImage) }},
		{"js client gets its bound identity, nothing else", func(t *testing.T) { e.scenarioTokens(t, "js", e.jsImage) }},
		{"first token with the identity attached", e.scenarioFirstToken},
		{"first token waits for the assigner", e.scenarioWaitForAttach},
		{"job with the native sidecar completes", e.scenarioJob},
		{"sandbox restart and detach on deletion", e.scenarioRestartAndDetach},
		{"unlabelled namespace untouched, hostNetwork refused", e.scenarioUntouchedAndRefused},
		{"attacker matrix: no route to an unbound identity", e.scenarioAttackMatrix},
		{"webhook rolling restart admits every pod", e.scenarioWebhookRollout},
		{"alert fires when ARM refuses an identity", e.scenarioAlertFires},
		{"federated identity: SDK tokens by workload identity federation, nothing attached", e.scenarioFederated},
		// Last: they change the release and the node (undone at their end).
		{"guard mode keeps identities to isolated pods", e.scenarioGuard},
		{"CNI mode: restricted namespaces, no side door", e.scenarioCNIMode},
	}
	var outcomes []Outcome
	for _, sc := range scenarios {
		ran := false
		passed := t.Run(sc.name, func(t *testing.T) { ran = true; sc.run(t) })
		if ran {
			outcomes = append(outcomes, Outcome{Scenario: sc.name, Passed: passed})
		}
	}

	cmd := "go test ./test/suites/e2e/ -run " + flagValue("test.run", "TestE2E")
	if figs := e.figures.List(); *writeFigures && len(figs) > 0 {
		body := "### Figures of the last run\n\n" + Render(ThisMachine(cmd, time.Now()), outcomes, figs)
		if err := WriteSection(benchmarksPage(), FiguresSection, body); err != nil {
			t.Errorf("writing BENCHMARKS.md: %v", err)
		}
	}
	if rows := e.matrix.Rows(); *writeFigures && len(rows) > 0 {
		body := "### Attacker matrix of the last run\n\n" + RenderMatrix(ThisMachine(cmd, time.Now()), rows)
		if err := WriteSection(benchmarksPage(), MatrixSection, body); err != nil {
			t.Errorf("writing BENCHMARKS.md: %v", err)
		}
	}
}

// setUp starts the cluster, builds and imports the app images and installs podidentity.
func setUp(ctx context.Context, t *testing.T) *env {
	t.Helper()
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{Log: testLog{t}})
	if err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component logs (all in %s/logs):\n%s", c.StateDir(), c.LogTails(30))
		}
		if *keepCluster {
			t.Logf("cluster left running (-e2e.keep): kubectl --kubeconfig %s", c.KubeconfigPath())
			c.Release()
			return
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	// controller-runtime's client logs through a global logger and prints a stack trace when none is set.
	ctrllog.SetLogger(logr.Discard())
	e := &env{cluster: c, figures: &Figures{}, matrix: &Matrix{}, imds: newIMDSAdmin()}
	e.cs, e.c = clients(t, c)
	clusterUp := time.Since(began)

	root, err := apps.RootDir()
	if err != nil {
		t.Fatal(err)
	}
	images := time.Now()
	for _, b := range []struct {
		build func(context.Context, string) (string, error)
		tar   string
		ref   *string
	}{
		{apps.BuildGoClientImage, "goclient.tar", &e.goImage},
		{apps.BuildJSClientImage, "jsclient.tar", &e.jsImage},
		{func(ctx context.Context, tar string) (string, error) { return apps.BuildAttackerImage(ctx, tar, 0) }, "attacker.tar", &e.attackerImage},
		{func(ctx context.Context, tar string) (string, error) {
			return apps.BuildAttackerImage(ctx, tar, contract.SidecarUID)
		}, "attacker-sidecar-uid.tar", &e.attackerSidecarUIDImage},
	} {
		tar := filepath.Join(root, "bin", "e2e", b.tar)
		if *b.ref, err = b.build(ctx, tar); err != nil {
			t.Fatal(err)
		}
		if info, err := os.Stat(tar); err == nil {
			e.figures.Add(Figure{Scenario: "set-up", Name: "image " + *b.ref + " (tarball, gzip layer)", Value: fmt.Sprintf("%.1f MiB", float64(info.Size())/(1<<20))})
		}
		if err := c.ImportImage(ctx, tar); err != nil {
			t.Fatal(err)
		}
	}
	appImages := time.Since(images)

	installed := time.Now()
	if e.release, err = install.Install(ctx, c, install.Options{RepoDir: root, HelmHome: filepath.Join(c.StateDir(), "helm-e2e"), Log: t.Logf}); err != nil {
		t.Fatalf("installing podidentity: %v", err)
	}
	e.podidentityNamespace = install.Namespace
	e.figures.Add(Figure{Scenario: "set-up", Name: "cluster up (Start)", Value: seconds(clusterUp)})
	e.figures.Add(Figure{Scenario: "set-up", Name: "app images built and imported", Value: seconds(appImages)})
	e.figures.Add(Figure{Scenario: "set-up", Name: "podidentity installed and ready", Value: seconds(time.Since(installed))})
	return e
}

// clients are a clientset and a controller-runtime client (with the aadpodidentity.k8s.io types) of the cluster.
func clients(t *testing.T, c *cluster.Cluster) (kubernetes.Interface, client.Client) {
	t.Helper()
	cfg := c.RESTConfig()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	scheme := kruntime.NewScheme()
	for _, add := range []func(*kruntime.Scheme) error{clientgoscheme.AddToScheme, aadv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return cs, cl
}

// flagValue is the value of a command-line flag of the test binary, or def when unset.
func flagValue(name, def string) string {
	if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	return def
}

// testLog sends the harness's progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
