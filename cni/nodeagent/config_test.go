package nodeagent_test

import (
	"io"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/cni/nodeagent"
	"github.com/podidentity/podidentity/internal/imdspolicy"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestParse(t *testing.T) {
	downward := env(map[string]string{"NODE_NAME": "aks-nodepool1-0", "POD_NAMESPACE": "podidentity-system"})
	for _, tc := range []struct {
		name    string
		args    []string
		env     func(string) string
		check   func(t *testing.T, c nodeagent.Config)
		mention string
	}{
		{name: "defaults from the downward API", args: []string{"--sidecar-image=s:1"}, env: downward,
			check: func(t *testing.T, c nodeagent.Config) {
				s := c.Settings()
				if c.NodeName != "aks-nodepool1-0" || c.Namespace != "podidentity-system" || c.DaemonSetName != "podidentity-node" {
					t.Errorf("identity = %s %s %s", c.NodeName, c.Namespace, c.DaemonSetName)
				}
				if s.Kubeconfig != "/etc/cni/net.d/ZZZ-podidentity-cni-kubeconfig" || s.FailureDir != "/var/run/podidentity-cni" ||
					s.SidecarImage != "s:1" || s.FenceScope != "all" || s.InjectionLabel != "podidentity.io/injection" ||
					s.IMDSAddress != "169.254.169.254" || s.IMDSPort != 80 || s.SidecarPort != 15079 || strings.Join(s.ExemptNamespaces, ",") != "kube-system" {
					t.Errorf("plugin settings = %+v", s)
				}
				if c.CNIConfDir != "/host/etc/cni/net.d" || c.CNIBinDir != "/host/opt/cni/bin" || c.HealthAddress != ":15081" {
					t.Errorf("dirs = %s %s %s", c.CNIConfDir, c.CNIBinDir, c.HealthAddress)
				}
			}},
		{name: "chart-style flags", env: downward, args: []string{"--sidecar-image=s:2", "--exempt-namespaces=kube-system, podidentity-system",
			"--fence-scope=opted-in", "--host-cni-conf-dir=/etc/cni/conf.d", "--kubeconfig-name=ZZ-pi", "--injection-label=x.io/inject", "--sidecar-port=15090"},
			check: func(t *testing.T, c nodeagent.Config) {
				s := c.Settings()
				if s.Kubeconfig != "/etc/cni/conf.d/ZZ-pi" || c.Policy.Scope != imdspolicy.ScopeOptedIn || !c.Policy.Exempt("podidentity-system") ||
					s.InjectionLabel != "x.io/inject" || s.SidecarPort != 15090 || c.Redirect.SidecarPort != 15090 {
					t.Errorf("parsed %+v / %+v", s, c.Policy)
				}
			}},
		{name: "uninstall needs no identity", args: []string{"--uninstall"}, env: env(nil),
			check: func(t *testing.T, c nodeagent.Config) {
				if !c.Uninstall {
					t.Error("--uninstall not set")
				}
			}},
		{name: "no node name", args: []string{"--sidecar-image=s"}, env: env(map[string]string{"POD_NAMESPACE": "x"}), mention: "NODE_NAME"},
		{name: "no namespace", args: []string{"--sidecar-image=s"}, env: env(map[string]string{"NODE_NAME": "x"}), mention: "POD_NAMESPACE"},
		{name: "no sidecar image", args: nil, env: downward, mention: "--sidecar-image"},
		{name: "bad scope", args: []string{"--sidecar-image=s", "--fence-scope=none"}, env: downward, mention: "--fence-scope"},
		{name: "kubeconfig name the runtime would load", args: []string{"--sidecar-image=s", "--kubeconfig-name=99-kube.conf"}, env: downward, mention: "would load it"},
		{name: "bad port", args: []string{"--sidecar-image=s", "--imds-port=70000"}, env: downward, mention: "1-65535"},
		{name: "bad IMDS address", args: []string{"--sidecar-image=s", "--imds-address=127.0.0.1"}, env: downward, mention: "loopback"},
		{name: "stray argument", args: []string{"--sidecar-image=s", "install"}, env: downward, mention: "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := nodeagent.Parse(tc.args, tc.env, io.Discard)
			if tc.mention != "" {
				if err == nil || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("Parse = %v, want an error saying %q", err, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
