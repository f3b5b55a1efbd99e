package install_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/podidentity/podidentity/cni/install"
	"github.com/podidentity/podidentity/cni/pluginconf"
	"github.com/podidentity/podidentity/test/toolbox/promtest"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

// node is a host's CNI directories in temp dirs, and an installer for them.
type node struct {
	conf, bin string
	binary    []byte
	in        *install.Installer
	reg       *prometheus.Registry
	mu        sync.Mutex
	token     string
}

func newNode(t *testing.T, files map[string]string) *node {
	t.Helper()
	n := &node{conf: t.TempDir(), bin: t.TempDir(), binary: []byte("\x7fELF podidentity-cni test binary"), token: "token-1"}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(n.conf, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(t.TempDir(), "podidentity-cni")
	if err := os.WriteFile(src, n.binary, 0o755); err != nil {
		t.Fatal(err)
	}
	n.reg = prometheus.NewRegistry()
	n.in = &install.Installer{
		ConfDir:        n.conf,
		BinDir:         n.bin,
		PluginBinary:   src,
		KubeconfigName: "ZZZ-podidentity-cni-kubeconfig",
		Entry:          entry("sidecar:1"),
		Credentials: func() (install.Credentials, error) {
			n.mu.Lock()
			defer n.mu.Unlock()
			return install.Credentials{Server: "https://10.0.0.1:443", CA: []byte(testCA), Token: n.token}, nil
		},
		Log:     testr.New(t),
		Metrics: install.NewMetrics(n.reg),
	}
	return n
}

func (n *node) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.conf, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (n *node) names(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(n.conf)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// writes is podidentity_node_plugin_writes_total{file}.
func (n *node) writes(t *testing.T, file string) float64 {
	return promtest.Value(t, n.reg, "podidentity_node_plugin_writes_total", map[string]string{"file": file})
}

func chained(t *testing.T, name, data string) bool {
	t.Helper()
	has, err := install.HasEntry(name, []byte(data))
	return err == nil && has
}

func TestSyncInstallsAndIsIdempotent(t *testing.T) {
	n := newNode(t, map[string]string{"10-azure.conflist": azureConflist, "99-loopback.conf": `{"cniVersion":"0.3.1","name":"lo","type":"loopback"}`})
	if err := n.in.Ready(); err == nil {
		t.Error("ready before the first sync")
	}
	if err := n.in.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := n.in.Ready(); err != nil {
		t.Errorf("not ready after a successful sync: %v", err)
	}
	bin := filepath.Join(n.bin, pluginconf.PluginType)
	if b, err := os.ReadFile(bin); err != nil || string(b) != string(n.binary) {
		t.Errorf("binary = %q, %v", b, err)
	}
	if st, _ := os.Stat(bin); st == nil || st.Mode().Perm() != 0o755 {
		t.Errorf("binary mode = %v", st)
	}
	kc := filepath.Join(n.conf, "ZZZ-podidentity-cni-kubeconfig")
	if st, err := os.Stat(kc); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig: %v, %v; want mode 0600", st, err)
	}
	if !strings.Contains(n.read(t, "ZZZ-podidentity-cni-kubeconfig"), "token-1") {
		t.Error("the kubeconfig does not hold the token")
	}
	if !chained(t, "10-azure.conflist", n.read(t, "10-azure.conflist")) {
		t.Errorf("10-azure.conflist is not chained:\n%s", n.read(t, "10-azure.conflist"))
	}
	if got := n.read(t, "99-loopback.conf"); got != `{"cniVersion":"0.3.1","name":"lo","type":"loopback"}` {
		t.Errorf("a file the runtime does not read first was changed: %s", got)
	}
	if got := len(n.names(t)); got != 3 {
		t.Errorf("conf dir holds %v: a temporary file was left behind", n.names(t))
	}

	stat := func(name string) os.FileInfo {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	before := []os.FileInfo{stat(bin), stat(kc), stat(filepath.Join(n.conf, "10-azure.conflist"))}
	if err := n.in.Sync(); err != nil {
		t.Fatal(err)
	}
	for i, f := range []string{bin, kc, filepath.Join(n.conf, "10-azure.conflist")} {
		if !os.SameFile(before[i], stat(f)) || !before[i].ModTime().Equal(stat(f).ModTime()) {
			t.Errorf("a second sync rewrote %s", f)
		}
	}
	for _, f := range []string{"binary", "kubeconfig", "conflist"} {
		if got := n.writes(t, f); got != 1 {
			t.Errorf("writes of %s = %v, want 1", f, got)
		}
	}
}

func TestSyncRefusesAndWaits(t *testing.T) {
	t.Run("no configuration yet", func(t *testing.T) {
		n := newNode(t, nil)
		err := n.in.Sync()
		if err == nil || !strings.Contains(err.Error(), "no CNI configuration") || n.in.Ready() == nil {
			t.Errorf("Sync = %v, Ready = %v; want both to say there is no configuration yet", err, n.in.Ready())
		}
	})
	t.Run("first file not JSON", func(t *testing.T) {
		n := newNode(t, map[string]string{"10-broken.conflist": `{"plugins": [`, "20-ok.conflist": compactConflist})
		err := n.in.Sync()
		if err == nil || !strings.Contains(err.Error(), "10-broken.conflist is not valid JSON") {
			t.Errorf("Sync = %v", err)
		}
		if got := n.read(t, "10-broken.conflist"); got != `{"plugins": [` {
			t.Errorf("the broken file was changed: %s", got)
		}
		if chained(t, "20-ok.conflist", n.read(t, "20-ok.conflist")) {
			t.Error("a file the runtime does not read was chained instead")
		}
	})
	t.Run("a .conf whose .conflist name is taken", func(t *testing.T) {
		n := newNode(t, map[string]string{"10-bridge.conf": bridgeConf, "10-bridge.conflist": compactConflist})
		if err := n.in.Sync(); err == nil || !strings.Contains(err.Error(), "that the installer did not write") {
			t.Errorf("Sync = %v", err)
		}
		if got := n.read(t, "10-bridge.conflist"); got != compactConflist {
			t.Errorf("someone else's conflist was overwritten:\n%s", got)
		}
	})
}

// TestRunFollowsThePrimaryCNI: the primary CNI rewriting its file, a new first file appearing, and the token
// rotating are all answered; the installer's own writes cause no further writes.
func TestRunFollowsThePrimaryCNI(t *testing.T) {
	n := newNode(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.in.Run(ctx, 300*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	// The primary CNI starts after the agent: the plugin is chained as soon as its file appears.
	if err := os.WriteFile(filepath.Join(n.conf, "10-azure.conflist"), []byte(azureConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, 20*time.Millisecond, "the new file is chained and the installer ready", func() bool {
		return chained(t, "10-azure.conflist", n.read(t, "10-azure.conflist")) && n.in.Ready() == nil
	})

	// The primary CNI rewrites its file in place, then replaces it atomically, dropping our entry each time.
	for _, how := range []string{"in place", "rename"} {
		writes := n.writes(t, "conflist")
		path := filepath.Join(n.conf, "10-azure.conflist")
		if how == "in place" {
			if err := os.WriteFile(path, []byte(azureConflist), 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			tmp := filepath.Join(n.conf, ".azure.tmp")
			if err := os.WriteFile(tmp, []byte(azureConflist), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}
		wait.Until(t, 5*time.Second, 20*time.Millisecond, "the rewritten file is chained again ("+how+")", func() bool {
			return chained(t, "10-azure.conflist", n.read(t, "10-azure.conflist"))
		})
		// No loop: after the re-chain, a settled installer writes nothing more.
		time.Sleep(700 * time.Millisecond)
		if got := n.writes(t, "conflist"); got != writes+1 {
			t.Errorf("%s: %v conflist writes after the primary's rewrite, want exactly 1", how, got-writes)
		}
	}

	// Another CNI takes the first place: that file is chained too.
	if err := os.WriteFile(filepath.Join(n.conf, "05-cilium.conf"), []byte(bridgeConf), 0o644); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, 20*time.Millisecond, "05-cilium.conf becomes a chained 05-cilium.conflist", func() bool {
		b, err := os.ReadFile(filepath.Join(n.conf, "05-cilium.conflist"))
		_, confLeft := os.Stat(filepath.Join(n.conf, "05-cilium.conf"))
		return err == nil && chained(t, "05-cilium.conflist", string(b)) && os.IsNotExist(confLeft)
	})

	// The kubelet rotates the token: the kubeconfig follows within the resync interval.
	n.mu.Lock()
	n.token = "token-2"
	n.mu.Unlock()
	wait.Until(t, 5*time.Second, 20*time.Millisecond, "the kubeconfig holds the rotated token", func() bool {
		return strings.Contains(n.read(t, "ZZZ-podidentity-cni-kubeconfig"), "token-2")
	})

	// Our binary removed from the bin dir (a node image cleanup): put back.
	if err := os.Remove(filepath.Join(n.bin, pluginconf.PluginType)); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, 20*time.Millisecond, "the binary is back", func() bool {
		_, err := os.Stat(filepath.Join(n.bin, pluginconf.PluginType))
		return err == nil
	})

	// Stopping the loop (a rollout: the agent decides separately whether to uninstall) leaves everything.
	cancel()
	<-done
	for _, f := range []string{filepath.Join(n.conf, "ZZZ-podidentity-cni-kubeconfig"), filepath.Join(n.bin, pluginconf.PluginType)} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after the loop stopped: %v", err)
		}
	}
	if !chained(t, "10-azure.conflist", n.read(t, "10-azure.conflist")) {
		t.Error("after the loop stopped the conflist is no longer chained")
	}
}

func TestUninstallRestoresTheOriginalBytes(t *testing.T) {
	originals := map[string]string{
		"10-azure.conflist": azureConflist,
		"20-bridge.conf":    bridgeConf,
		"99-loopback.conf":  `{"cniVersion":"0.3.1","name":"lo","type":"loopback"}`,
		"README":            "not a CNI file",
	}
	n := newNode(t, originals)
	if err := n.in.Sync(); err != nil {
		t.Fatal(err)
	}
	// 20-bridge.conf becomes the first file later (the Azure file is removed), and is chained as well.
	azure := n.read(t, "10-azure.conflist")
	if err := os.Remove(filepath.Join(n.conf, "10-azure.conflist")); err != nil {
		t.Fatal(err)
	}
	if err := n.in.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.conf, "10-azure.conflist"), []byte(azure), 0o644); err != nil {
		t.Fatal(err)
	}
	if !chained(t, "20-bridge.conflist", n.read(t, "20-bridge.conflist")) {
		t.Fatal("setup: 20-bridge.conf was not converted and chained")
	}

	if err := n.in.Uninstall(); err != nil {
		t.Fatal(err)
	}
	for name, want := range originals {
		if got := n.read(t, name); got != want {
			t.Errorf("%s after uninstall:\n%s\nwant the original bytes:\n%s", name, got, want)
		}
	}
	if got := n.names(t); len(got) != len(originals) {
		t.Errorf("conf dir after uninstall: %v, want only the original files", got)
	}
	if _, err := os.Stat(filepath.Join(n.bin, pluginconf.PluginType)); !os.IsNotExist(err) {
		t.Errorf("the binary is still there: %v", err)
	}
	if n.in.Ready() == nil {
		t.Error("ready after uninstall")
	}
	if err := n.in.Uninstall(); err != nil {
		t.Errorf("a second uninstall: %v", err)
	}
}

func TestUninstalling(t *testing.T) {
	gr := schema.GroupResource{Group: "apps", Resource: "daemonsets"}
	now := metav1.Now()
	for _, tc := range []struct {
		name    string
		ds      *appsv1.DaemonSet
		err     error
		want    bool
		mention string
	}{
		{"DaemonSet exists: rollout, drain or restart", &appsv1.DaemonSet{}, nil, false, "rollout"},
		{"DaemonSet gone", nil, apierrors.NewNotFound(gr, "podidentity-node"), true, "no longer exists"},
		{"DaemonSet being deleted (foreground)", &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}}, nil, true, "being deleted"},
		{"service account deleted with the release", nil, apierrors.NewUnauthorized("token"), true, "ServiceAccount was deleted"},
		{"RBAC deleted with the release", nil, apierrors.NewForbidden(gr, "podidentity-node", errors.New("no")), true, "RBAC was deleted"},
		{"API server unreachable", nil, errors.New("dial tcp: connection refused"), false, "fail closed"},
		{"API server error", nil, apierrors.NewInternalError(errors.New("etcd")), false, "fail closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := install.Uninstalling(tc.ds, tc.err)
			if got != tc.want || !strings.Contains(why, tc.mention) {
				t.Errorf("Uninstalling = %v, %q; want %v, saying %q", got, why, tc.want, tc.mention)
			}
		})
	}
}
