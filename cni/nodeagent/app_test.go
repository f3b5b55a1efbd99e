package nodeagent_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podidentity/podidentity/cni/failures"
	"github.com/podidentity/podidentity/cni/install"
	"github.com/podidentity/podidentity/cni/internal/cnitest"
	"github.com/podidentity/podidentity/cni/nodeagent"
	"github.com/podidentity/podidentity/cni/pluginconf"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

const azureConflist = `{
   "cniVersion":"0.3.0",
   "name":"azure",
   "plugins":[
      {
         "type":"azure-vnet",
         "mode":"transparent",
         "ipam":{"type":"azure-vnet-ipam"}
      }
   ]
}
`

// agentWorld is a node's directories in temp dirs, an API server with the agent's service account and
// DaemonSet, and the flags that tie them together.
type agentWorld struct {
	admin      kubernetes.Interface
	confDir    string
	binDir     string
	failureDir string
	args       []string
	health     string
}

func newAgentWorld(t *testing.T) *agentWorld {
	t.Helper()
	env := testenv.Start(t, nil)
	admin := kubernetes.NewForConfigOrDie(env.Config)
	token := cnitest.ServiceAccount(t, admin, "podidentity-system", "podidentity-node", cnitest.RBACRules())
	cnitest.WaitAuthorized(t, kubernetes.NewForConfigOrDie(cnitest.AsToken(env.Config, token)), "default")
	dir := t.TempDir()
	w := &agentWorld{admin: admin, confDir: filepath.Join(dir, "net.d"), binDir: filepath.Join(dir, "bin"), failureDir: filepath.Join(dir, "failures")}
	for _, d := range []string{w.confDir, w.binDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string][]byte{
		"token":           []byte(token),
		"ca.crt":          env.Config.CAData,
		"podidentity-cni": []byte("\x7fELF the plugin"),
		filepath.Join("net.d", "10-azure.conflist"): []byte(azureConflist),
	}
	// The agent's own client uses the same service account: the test proves the chart's RBAC suffices.
	kc, err := install.Kubeconfig(env.Config.Host, env.Config.CAData, token)
	if err != nil {
		t.Fatal(err)
	}
	files["agent-kubeconfig"] = kc
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.health = l.Addr().String()
	_ = l.Close()
	w.args = []string{
		"--node-name=node-1", "--namespace=podidentity-system", "--daemonset-name=podidentity-node",
		"--kubeconfig=" + filepath.Join(dir, "agent-kubeconfig"),
		"--cni-conf-dir=" + w.confDir, "--host-cni-conf-dir=/etc/cni/net.d",
		"--cni-bin-dir=" + w.binDir, "--plugin-binary=" + filepath.Join(dir, "podidentity-cni"),
		"--token-file=" + filepath.Join(dir, "token"), "--ca-file=" + filepath.Join(dir, "ca.crt"),
		"--failure-dir=" + w.failureDir, "--host-failure-dir=/var/run/podidentity-cni",
		"--sidecar-image=ghcr.io/podidentity/podidentity-sidecar:test", "--exempt-namespaces=kube-system,podidentity-system",
		"--health-address=" + w.health, "--install-resync-interval=1s", "--resync-interval=2s",
	}
	w.createDaemonSet(t)
	return w
}

func (w *agentWorld) createDaemonSet(t *testing.T) {
	t.Helper()
	labels := map[string]string{"app": "podidentity-node"}
	_, err := w.admin.AppsV1().DaemonSets("podidentity-system").Create(context.Background(), &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "podidentity-node"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "podidentity-node:test"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// agent is one run of the agent: Main in a goroutine, stopped by cancelling its context as SIGTERM does.
type agent struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Main returned, with code set
	code   int
	mu     sync.Mutex
	logs   *bytes.Buffer
}

type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (s syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (w *agentWorld) start(t *testing.T) *agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{cancel: cancel, done: make(chan struct{}), logs: &bytes.Buffer{}}
	go func() { defer close(a.done); a.code = nodeagent.Main(ctx, w.args, syncWriter{&a.mu, a.logs}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
		}
	})
	started := time.Now()
	deadline := started.Add(15 * time.Second)
	for {
		code, body := get(w.health, "/readyz")
		if code == http.StatusOK {
			t.Logf("the agent was ready after %v", time.Since(started).Round(time.Millisecond))
			return a
		}
		select {
		case <-a.done:
			t.Fatalf("the agent exited with %d before it was ready:\n%s", a.code, a.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent is not ready: %d %s\n%s", code, body, a.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (a *agent) output() string { a.mu.Lock(); defer a.mu.Unlock(); return a.logs.String() }

// stop sends the agent its "SIGTERM" and waits for it to exit.
func (a *agent) stop(t *testing.T) {
	t.Helper()
	a.cancel()
	started := time.Now()
	defer func() { t.Logf("the agent stopped after %v", time.Since(started).Round(time.Millisecond)) }()
	select {
	case <-a.done:
		if a.code != 0 {
			t.Fatalf("the agent exited with %d:\n%s", a.code, a.output())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the agent did not stop:\n%s", a.output())
	}
}

func get(addr, path string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (w *agentWorld) file(t *testing.T, dir, name string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if os.IsNotExist(err) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func (w *agentWorld) installed(t *testing.T) bool {
	t.Helper()
	conflist, _ := w.file(t, w.confDir, "10-azure.conflist")
	has, err := install.HasEntry("10-azure.conflist", []byte(conflist))
	_, kc := w.file(t, w.confDir, nodeagent.DefaultKubeconfigName)
	_, bin := w.file(t, w.binDir, "podidentity-cni")
	return err == nil && has && kc && bin
}

func (w *agentWorld) pristine(t *testing.T) bool {
	t.Helper()
	conflist, _ := w.file(t, w.confDir, "10-azure.conflist")
	_, kc := w.file(t, w.confDir, nodeagent.DefaultKubeconfigName)
	_, bin := w.file(t, w.binDir, "podidentity-cni")
	return conflist == azureConflist && !kc && !bin
}

// TestAgentInstallsAndDecidesAtShutdown runs the whole agent: it installs the plugin (entry, kubeconfig that
// works against the API server, binary), reports ready and counts the plugin's failed ADDs; stopped while its
// DaemonSet exists (a rollout), it leaves everything; stopped while its DaemonSet is gone or being deleted,
// it restores the node's files byte for byte.
func TestAgentInstallsAndDecidesAtShutdown(t *testing.T) {
	w := newAgentWorld(t)
	a := w.start(t)
	if !w.installed(t) {
		t.Fatalf("ready, but not installed:\n%s", a.output())
	}
	conflist, _ := w.file(t, w.confDir, "10-azure.conflist")
	for _, want := range []string{`"kubeconfig": "/etc/cni/net.d/ZZZ-podidentity-cni-kubeconfig"`, `"failureDir": "/var/run/podidentity-cni"`,
		`"sidecarImage": "ghcr.io/podidentity/podidentity-sidecar:test"`, `"exemptNamespaces": [`} {
		if !strings.Contains(conflist, want) {
			t.Errorf("the plugin's entry lacks %s:\n%s", want, conflist)
		}
	}

	// The kubeconfig the plugin will use reaches the API server with the agent's token.
	kc, _ := w.file(t, w.confDir, nodeagent.DefaultKubeconfigName)
	cfg, err := clientcmd.RESTConfigFromKubeConfig([]byte(kc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Errorf("the plugin's kubeconfig does not work: %v", err)
	}

	// A failed ADD recorded by the plugin is counted and drained.
	if err := failures.Write(w.failureDir, failures.Record{Time: time.Now(), Cause: "api-unreachable", Pod: "apps/web", Message: "podidentity-cni: ..."}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, metrics := get(w.health, "/metrics")
		if strings.Contains(metrics, `podidentity_node_cni_add_failures_total{cause="api-unreachable"} 1`) &&
			strings.Contains(metrics, "podidentity_node_plugin_ready 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics do not show the failure and readiness:\n%s", grep(metrics, "podidentity_node_"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if recs, _ := failures.Drain(w.failureDir); len(recs) != 0 {
		t.Errorf("the failure record was not drained: %+v", recs)
	}
	if code, _ := get(w.health, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}

	// A rollout: the DaemonSet exists, the agent is stopped; everything stays.
	a.stop(t)
	if !w.installed(t) {
		t.Fatalf("a rollout removed the plugin:\n%s", a.output())
	}
	if !strings.Contains(a.output(), "the plugin stays chained") {
		t.Errorf("the agent did not log its decision:\n%s", a.output())
	}

	// An uninstall: the DaemonSet is deleted (kubectl's default, background propagation), then the pod stopped.
	a = w.start(t)
	if err := w.admin.AppsV1().DaemonSets("podidentity-system").Delete(context.Background(), "podidentity-node", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	a.stop(t)
	if !w.pristine(t) {
		conflist, _ := w.file(t, w.confDir, "10-azure.conflist")
		t.Fatalf("after the uninstall the node's files are not as before:\n%s\n%s", conflist, a.output())
	}

	// Foreground deletion: the DaemonSet still exists, with a deletion timestamp, while its pods stop.
	w.createDaemonSet(t)
	a = w.start(t)
	fg := metav1.DeletePropagationForeground
	if err := w.admin.AppsV1().DaemonSets("podidentity-system").Delete(context.Background(), "podidentity-node",
		metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil {
		t.Fatal(err)
	}
	a.stop(t)
	if !w.pristine(t) {
		t.Fatalf("after a foreground deletion the node's files are not as before:\n%s", a.output())
	}
	if !strings.Contains(a.output(), "the DaemonSet is being deleted") {
		t.Errorf("the agent did not say why it uninstalled:\n%s", a.output())
	}
}

func TestAgentUninstallMode(t *testing.T) {
	w := &agentWorld{confDir: t.TempDir(), binDir: t.TempDir()}
	chained, err := install.Chain("10-azure.conflist", []byte(azureConflist), pluginconf.NewEntry(pluginconf.Settings{Kubeconfig: "/k", SidecarImage: "s"}))
	if err != nil {
		t.Fatal(err)
	}
	for dir, files := range map[string]map[string]string{
		w.confDir: {"10-azure.conflist": string(chained.Data), nodeagent.DefaultKubeconfigName: "kubeconfig"},
		w.binDir:  {"podidentity-cni": "binary"},
	} {
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	var logs bytes.Buffer
	code := nodeagent.Main(context.Background(), []string{"--uninstall", "--cni-conf-dir=" + w.confDir, "--cni-bin-dir=" + w.binDir}, &logs)
	if code != 0 || !w.pristine(t) {
		t.Errorf("--uninstall exited %d, pristine %v:\n%s", code, w.pristine(t), logs.String())
	}
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
