package main_test

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/cni/failures"
	"github.com/podidentity/podidentity/cni/install"
	"github.com/podidentity/podidentity/cni/internal/cnitest"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/test/toolbox/nstest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

const (
	sidecarImage = "ghcr.io/podidentity/podidentity-sidecar:test"
	imds         = "169.254.169.254"
	staticUID    = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
)

// buildPlugin compiles the plugin as it ships: static, no cgo.
func buildPlugin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "podidentity-cni")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	return bin
}

// world is an API server holding the test's namespaces, pods and exceptions, and the plugin's kubeconfig
// with the podidentity-node service account's token.
type world struct {
	cs         kubernetes.Interface
	kubeconfig string
	pods       map[string]*corev1.Pod // by name
}

func newWorld(t *testing.T) *world {
	env := testenv.Start(t, nil)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	token := cnitest.ServiceAccount(t, cs, "podidentity-system", "podidentity-node", cnitest.RBACRules())
	kc, err := install.Kubeconfig(env.Config.Host, env.Config.CAData, token)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{cs: cs, kubeconfig: filepath.Join(t.TempDir(), "ZZZ-podidentity-cni-kubeconfig"), pods: map[string]*corev1.Pod{}}
	if err := os.WriteFile(w.kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	cnitest.WaitAuthorized(t, kubernetes.NewForConfigOrDie(cnitest.AsToken(env.Config, token)), "apps")
	ctx := context.Background()
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
	} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Client.Create(ctx, &aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Name: "batch", Namespace: "apps"},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "batch"}},
	}); err != nil {
		t.Fatal(err)
	}
	always := corev1.ContainerRestartPolicyAlways
	sidecar := func(image string) []corev1.Container {
		return []corev1.Container{
			{Name: contract.InitContainerName, Image: "init:test"},
			{Name: contract.SidecarContainerName, Image: image, RestartPolicy: &always},
		}
	}
	identities := map[string]string{contract.IdentitiesAnnotation: `[]`}
	for _, p := range []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "injected", Namespace: "apps", Annotations: identities},
			Spec: corev1.PodSpec{InitContainers: sidecar(sidecarImage)}},
		{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: "apps", Labels: map[string]string{"app": "web"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other-namespace", Namespace: "plain"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "excepted", Namespace: "apps", Labels: map[string]string{"app": "batch"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "fake-sidecar", Namespace: "apps", Annotations: identities},
			Spec: corev1.PodSpec{InitContainers: sidecar("attacker/sidecar:1")}},
		{ObjectMeta: metav1.ObjectMeta{Name: "system", Namespace: "kube-system"}},
		// The mirror of a static pod: the runtime knows it by the kubelet's UID, in the annotation.
		{ObjectMeta: metav1.ObjectMeta{Name: "static-web-node-1", Namespace: "plain",
			Annotations: map[string]string{imdspolicy.MirrorAnnotation: staticUID}}, Spec: corev1.PodSpec{NodeName: "node-1"}},
	} {
		if len(p.Spec.Containers) == 0 {
			p.Spec.Containers = []corev1.Container{{Name: "app", Image: "app:test"}}
		}
		created, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w.pods[p.Name] = created
	}
	return w
}

// runtime runs the plugin as containerd does: environment, configuration with prevResult on stdin, result
// on stdout, logs on stderr.
type runtime struct {
	bin        string
	kubeconfig string
	failureDir string
}

type run struct {
	code   int
	stdout string
	stderr string
}

func (r runtime) conf(t *testing.T, netns string) []byte {
	t.Helper()
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "podidentity-cni",
		"kubeconfig": r.kubeconfig, "imdsAddress": imds, "imdsPort": 80, "sidecarPort": contract.SidecarPort,
		"sidecarImage": sidecarImage, "injectionLabel": contract.NamespaceInjectionLabel,
		"exemptNamespaces": []string{"kube-system", "podidentity-system"}, "fenceScope": "all", "failureDir": r.failureDir,
		"prevResult": map[string]any{
			"cniVersion": "1.0.0",
			"interfaces": []any{map[string]any{"name": "eth0", "sandbox": netns}},
			"ips":        []any{map[string]any{"address": "10.200.0.2/30", "gateway": "10.200.0.1", "interface": 0}},
			"routes":     []any{map[string]any{"dst": "0.0.0.0/0"}},
		},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (r runtime) exec(t *testing.T, command, netns string, pod *corev1.Pod, stdin []byte) run {
	t.Helper()
	args := "IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=" + strings.Repeat("ab", 32)
	if pod != nil {
		args += fmt.Sprintf(";K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", pod.Namespace, pod.Name, pod.UID)
	}
	cmd := exec.Command(r.bin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + strings.Repeat("ab", 32),
		"CNI_NETNS=" + netns,
		"CNI_IFNAME=eth0",
		"CNI_ARGS=" + args,
		"CNI_PATH=" + filepath.Dir(r.bin),
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return run{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func netnsPath(ns *nstest.NS) string { return "/var/run/netns/" + ns.Name }

// table returns the rendered project table of ns ("" when there is none).
func table(t *testing.T, ns *nstest.NS) string {
	t.Helper()
	k, err := redirect.NewKernel(ns.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	live, found, err := k.Live()
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		return ""
	}
	return redirect.Render(live)
}

func mustSucceed(t *testing.T, what string, r run) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", what, r.code, r.stdout, r.stderr)
	}
}

// cniError is the error the plugin prints on stdout when it fails.
func cniError(t *testing.T, r run) (code uint, msg string) {
	t.Helper()
	var e struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		t.Fatalf("the failure's stdout is not a CNI error: %v\n%s\nstderr: %s", err, r.stdout, r.stderr)
	}
	return e.Code, e.Msg
}

func TestPluginAsARuntimeRunsIt(t *testing.T) {
	cnitest.RequireRoot(t)
	bin := buildPlugin(t)
	w := newWorld(t)
	rt := runtime{bin: bin, kubeconfig: w.kubeconfig, failureDir: t.TempDir()}
	cfg := redirect.DefaultConfig()
	fence, redir := redirect.Render(redirect.Fence(cfg)), redirect.Render(redirect.Desired(cfg))

	for _, tc := range []struct {
		pod  string
		want string // rendered table; "" for none
	}{
		{"injected", redir},
		{"plain", fence},
		{"other-namespace", fence},
		{"excepted", ""},
		{"system", ""},
		{"fake-sidecar", fence},
	} {
		t.Run(tc.pod, func(t *testing.T) {
			ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
			pod := w.pods[tc.pod]
			conf := rt.conf(t, netnsPath(ns))
			add := rt.exec(t, "ADD", netnsPath(ns), pod, conf)
			mustSucceed(t, "ADD", add)
			t.Logf("ADD stderr: %s", add.stderr)

			// The previous result is passed through unchanged.
			var got, want map[string]any
			if err := json.Unmarshal([]byte(add.stdout), &got); err != nil {
				t.Fatalf("ADD stdout is not a result: %v\n%s", err, add.stdout)
			}
			_ = json.Unmarshal(conf, &want)
			prev := want["prevResult"].(map[string]any)
			for _, k := range []string{"cniVersion", "interfaces", "ips", "routes"} {
				if g, _ := json.Marshal(got[k]); string(g) != string(mustJSON(t, prev[k])) {
					t.Errorf("result %s = %s, want the prevResult's %s", k, g, mustJSON(t, prev[k]))
				}
			}

			if got := table(t, ns); got != tc.want {
				t.Fatalf("after ADD the table is\n%s\nwant\n%s", got, tc.want)
			}
			before := ns.Cmd(t, "nft", "--handle", "list", "ruleset")
			mustSucceed(t, "second ADD", rt.exec(t, "ADD", netnsPath(ns), pod, conf))
			if after := ns.Cmd(t, "nft", "--handle", "list", "ruleset"); after != before {
				t.Errorf("a second ADD changed the ruleset:\n--- before\n%s\n--- after\n%s", before, after)
			}

			mustSucceed(t, "CHECK", rt.exec(t, "CHECK", netnsPath(ns), pod, conf))
			if tc.want != "" {
				ns.Cmd(t, "nft", "delete", "table", "inet", redirect.TableName)
				check := rt.exec(t, "CHECK", netnsPath(ns), pod, conf)
				if check.code == 0 {
					t.Fatal("CHECK passed after the table was deleted by hand")
				}
				if _, msg := cniError(t, check); !strings.Contains(msg, "is missing") || !strings.Contains(msg, "podidentity-node DaemonSet repairs it") {
					t.Errorf("CHECK failure = %q", msg)
				}
				mustSucceed(t, "ADD after the deletion", rt.exec(t, "ADD", netnsPath(ns), pod, conf))
			}

			mustSucceed(t, "DEL", rt.exec(t, "DEL", netnsPath(ns), pod, conf))
			if got := table(t, ns); got != "" {
				t.Errorf("after DEL the table is still there:\n%s", got)
			}
			mustSucceed(t, "second DEL", rt.exec(t, "DEL", netnsPath(ns), pod, conf))
		})
	}

	t.Run("redirect with the agent's exemption: ADD and CHECK leave it", func(t *testing.T) {
		ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
		pod := w.pods["injected"]
		conf := rt.conf(t, netnsPath(ns))
		k, err := redirect.NewKernel(ns.FD())
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		exempted := redirect.Desired(cfg.WithExemption(redirect.Exemption{Cgroup: redirect.Cgroup{ID: 4242, Level: 4}}))
		if _, err := k.Apply(exempted); err != nil {
			t.Fatal(err)
		}
		mustSucceed(t, "ADD", rt.exec(t, "ADD", netnsPath(ns), pod, conf))
		mustSucceed(t, "CHECK", rt.exec(t, "CHECK", netnsPath(ns), pod, conf))
		if got := table(t, ns); got != redirect.Render(exempted) {
			t.Errorf("ADD replaced the agent's exemption:\n%s", got)
		}
	})

	t.Run("a static pod, named by the kubelet's UID, is fenced", func(t *testing.T) {
		ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
		static := w.pods["static-web-node-1"].DeepCopy()
		static.UID = staticUID
		mustSucceed(t, "ADD", rt.exec(t, "ADD", netnsPath(ns), static, rt.conf(t, netnsPath(ns))))
		if got := table(t, ns); got != fence {
			t.Errorf("table:\n%s\nwant the fence", got)
		}
	})

	t.Run("a sandbox the runtime names no pod for is fenced", func(t *testing.T) {
		ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
		mustSucceed(t, "ADD", rt.exec(t, "ADD", netnsPath(ns), nil, rt.conf(t, netnsPath(ns))))
		if got := table(t, ns); got != fence {
			t.Errorf("table:\n%s\nwant the fence", got)
		}
	})

	t.Run("DEL of a namespace that is gone", func(t *testing.T) {
		gone := "/var/run/netns/pi-gone-" + nstest.UniqueSuffix(t)
		mustSucceed(t, "DEL", rt.exec(t, "DEL", gone, w.pods["plain"], rt.conf(t, gone)))
		mustSucceed(t, "DEL without CNI_NETNS", rt.exec(t, "DEL", "", w.pods["plain"], rt.conf(t, "")))
	})

	t.Run("a pod deleted and recreated under the same name", func(t *testing.T) {
		ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
		stale := w.pods["plain"].DeepCopy()
		stale.UID = "00000000-0000-4000-8000-000000000000"
		add := rt.exec(t, "ADD", netnsPath(ns), stale, rt.conf(t, netnsPath(ns)))
		if add.code == 0 {
			t.Fatal("ADD succeeded for another UID")
		}
		if _, msg := cniError(t, add); !strings.Contains(msg, "deleted and recreated") {
			t.Errorf("ADD failure = %q", msg)
		}
		if got := table(t, ns); got != "" {
			t.Errorf("the failed ADD installed a table:\n%s", got)
		}
	})

	t.Run("no prevResult: not chained", func(t *testing.T) {
		ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
		var conf map[string]any
		_ = json.Unmarshal(rt.conf(t, netnsPath(ns)), &conf)
		delete(conf, "prevResult")
		add := rt.exec(t, "ADD", netnsPath(ns), w.pods["plain"], mustJSON(t, conf))
		if _, msg := cniError(t, add); add.code == 0 || !strings.Contains(msg, "chained plugin") {
			t.Errorf("ADD without prevResult: exit %d, %q", add.code, msg)
		}
	})

	t.Run("the binary is static (no ELF interpreter): it runs on any node", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("the plugin binary has an ELF interpreter: build it with CGO_ENABLED=0")
			}
		}
	})

	t.Run("STATUS", func(t *testing.T) {
		var conf map[string]any
		_ = json.Unmarshal(rt.conf(t, ""), &conf)
		conf["cniVersion"] = "1.1.0"
		delete(conf, "prevResult")
		mustSucceed(t, "STATUS", rt.exec(t, "STATUS", "", nil, mustJSON(t, conf)))
		conf["kubeconfig"] = filepath.Join(t.TempDir(), "missing")
		status := rt.exec(t, "STATUS", "", nil, mustJSON(t, conf))
		code, msg := cniError(t, status)
		if status.code == 0 || code != 50 || !strings.Contains(msg, "is it running on this node?") {
			t.Errorf("STATUS without kubeconfig: exit %d, code %d, %q", status.code, code, msg)
		}
	})
}

// TestPluginFailsClosed: when the plugin cannot decide, ADD fails with a message naming the cause and the
// fix, installs nothing, and records the failure for the node agent; pods of exempt namespaces still start.
func TestPluginFailsClosed(t *testing.T) {
	cnitest.RequireRoot(t)
	bin := buildPlugin(t)
	w := newWorld(t)

	// An API server nobody listens on: a port just released.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := l.Addr().String()
	_ = l.Close()
	// The same API server, with a token it rejects, and with a service account that has no RBAC.
	unreachable := filepath.Join(t.TempDir(), "kubeconfig")
	badToken := filepath.Join(t.TempDir(), "kubeconfig")
	unbound := filepath.Join(t.TempDir(), "kubeconfig")
	{
		b, err := os.ReadFile(w.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		loaded, err := clientcmd.Load(b)
		if err != nil {
			t.Fatal(err)
		}
		c := loaded.Clusters[loaded.Contexts[loaded.CurrentContext].Cluster]
		kc, err := install.Kubeconfig("https://"+deadAddr, c.CertificateAuthorityData, "token")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(unreachable, kc, 0o600); err != nil {
			t.Fatal(err)
		}
		for path, token := range map[string]string{
			badToken: "not-a-token",
			unbound:  cnitest.ServiceAccount(t, w.cs, "podidentity-system", "no-rbac", nil),
		} {
			kc, err := install.Kubeconfig(c.Server, c.CertificateAuthorityData, token)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, kc, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}

	for _, tc := range []struct {
		name       string
		kubeconfig string
		pod        string
		mention    []string
		cause      string
		code       uint
	}{
		{"API server unreachable", unreachable, "plain",
			[]string{"failed, so it does not start without its IMDS protection", "is unreachable from the node", "is the podidentity-node DaemonSet running on this node?"},
			"api-unreachable", 11},
		{"kubeconfig missing", filepath.Join(t.TempDir(), "missing"), "plain",
			[]string{"kubeconfig", "cannot be read", "is it running on this node?"}, "kubeconfig", 999},
		{"token rejected", badToken, "injected",
			[]string{"rejected the credentials", "is the podidentity-node DaemonSet running on this node?"}, "unauthorized", 999},
		{"RBAC missing", unbound, "plain",
			[]string{"RBAC: the podidentity-node service account may not get pods", "ClusterRole needs"}, "forbidden", 999},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
			failureDir := t.TempDir()
			rt := runtime{bin: bin, kubeconfig: tc.kubeconfig, failureDir: failureDir}
			started := time.Now()
			add := rt.exec(t, "ADD", netnsPath(ns), w.pods[tc.pod], rt.conf(t, netnsPath(ns)))
			elapsed := time.Since(started)
			if add.code == 0 {
				t.Fatalf("ADD succeeded:\n%s", add.stdout)
			}
			code, msg := cniError(t, add)
			for _, m := range tc.mention {
				if !strings.Contains(msg, m) {
					t.Errorf("ADD failure does not say %q:\n%s", m, msg)
				}
			}
			if code != tc.code {
				t.Errorf("CNI error code %d, want %d", code, tc.code)
			}
			t.Logf("ADD failed after %v with code %d: %s", elapsed.Round(time.Millisecond), code, msg)
			if elapsed > 15*time.Second {
				t.Errorf("ADD took %v: the API budget is 10s", elapsed)
			}
			if got := table(t, ns); got != "" {
				t.Errorf("the failed ADD installed a table:\n%s", got)
			}
			recs, err := failures.Drain(failureDir)
			if err != nil || len(recs) != 1 || recs[0].Cause != tc.cause || recs[0].Pod != "apps/"+tc.pod {
				t.Errorf("failure records = %+v, %v; want one with cause %s", recs, err, tc.cause)
			}
		})
	}

	t.Run("exempt namespace starts without the API server", func(t *testing.T) {
		ns := nstest.New(t, nstest.UniqueSuffix(t), "pod")
		rt := runtime{bin: bin, kubeconfig: unreachable, failureDir: t.TempDir()}
		mustSucceed(t, "ADD", rt.exec(t, "ADD", netnsPath(ns), w.pods["system"], rt.conf(t, netnsPath(ns))))
		if got := table(t, ns); got != "" {
			t.Errorf("a pod of an exempt namespace got a table:\n%s", got)
		}
	})
}

// TestFencedPodCannotReachIMDS: through a veth to a "node" holding 169.254.169.254, a pod reaches a listener
// there before ADD and not after (the fence); an injected pod is redirected to its sidecar's port instead.
func TestFencedPodCannotReachIMDS(t *testing.T) {
	cnitest.RequireRoot(t)
	bin := buildPlugin(t)
	w := newWorld(t)
	rt := runtime{bin: bin, kubeconfig: w.kubeconfig, failureDir: t.TempDir()}

	for _, tc := range []struct {
		pod, want string
	}{
		{"plain", "error"},
		{"fake-sidecar", "error"},
		{"injected", "ok sidecar"},
	} {
		t.Run(tc.pod, func(t *testing.T) {
			link := nstest.NewLink(t, imds)
			nstest.Serve(t, link.Node, imds+":80", "node")
			nstest.Serve(t, link.Node, imds+":443", "node")
			nstest.Serve(t, link.Pod, fmt.Sprintf("127.0.0.1:%d", contract.SidecarPort), "sidecar")
			if got := link.Pod.Dial(imds+":80", 2*time.Second); got != "ok node" {
				t.Fatalf("before ADD: %q, want the node's IMDS reachable (the test's network is broken otherwise)", got)
			}
			mustSucceed(t, "ADD", rt.exec(t, "ADD", netnsPath(link.Pod), w.pods[tc.pod], rt.conf(t, netnsPath(link.Pod))))
			if got := link.Pod.Dial(imds+":80", 2*time.Second); !strings.HasPrefix(got, tc.want) {
				t.Errorf("after ADD, port 80: %q, want %q", got, tc.want)
			}
			if got := link.Pod.Dial(imds+":443", 2*time.Second); !strings.HasPrefix(got, "error") {
				t.Errorf("after ADD, port 443: %q, want refused", got)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
