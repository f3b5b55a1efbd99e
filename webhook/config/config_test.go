package config

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/version"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/webhook/inject"
)

func parse(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := Bind(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return c, c.Complete()
}

func TestDefaultsFollowTheContract(t *testing.T) {
	c, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Inject
	if s.SidecarPort != contract.SidecarPort || s.HealthPort != contract.SidecarHealthPort || s.SidecarUID != contract.SidecarUID ||
		s.IMDSAddress != contract.IMDSAddress || s.IMDSPort != contract.IMDSPort {
		t.Errorf("defaults differ from internal/contract: %+v", s)
	}
	if c.Mode != ModeAuto || !s.MetadataHeaderRequired || s.BlockInstanceMetadata {
		t.Errorf("mode %s, metadata-header-required %v, block-instance-metadata %v", c.Mode, s.MetadataHeaderRequired, s.BlockInstanceMetadata)
	}
	if s.Exemption != inject.ExemptionCgroup || s.UIDChangePolicy != inject.UIDChangeDeny {
		t.Errorf("sidecar-exemption defaults to %q and uid-change-policy to %q, want cgroup and deny (the closed ones)", s.Exemption, s.UIDChangePolicy)
	}
	if c.InjectionLabel != contract.NamespaceInjectionLabel {
		t.Errorf("namespace-injection-label defaults to %q", c.InjectionLabel)
	}
	if s.SidecarResources.Limits.Memory().String() != "64Mi" || s.InitResources.Requests.Cpu().String() != "10m" {
		t.Errorf("resources: sidecar %v, init %v", s.SidecarResources, s.InitResources)
	}
}

func TestFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(*Config) bool
	}{
		{"uid and ports", []string{"--sidecar-uid=2000", "--sidecar-port=16000", "--imds-port=8080"}, "",
			func(c *Config) bool {
				return c.Inject.SidecarUID == 2000 && c.Inject.SidecarPort == 16000 && c.Inject.IMDSPort == 8080
			}},
		{"mode classic", []string{"--mode=classic"}, "", func(c *Config) bool { return c.Mode == ModeClassic }},
		{"pull policy", []string{"--image-pull-policy=Always"}, "", func(c *Config) bool { return c.Inject.ImagePullPolicy == corev1.PullAlways }},
		{"resources", []string{"--sidecar-memory-limit=128Mi", "--init-cpu-limit=1"}, "", func(c *Config) bool {
			return c.Inject.SidecarResources.Limits.Memory().String() == "128Mi" && c.Inject.InitResources.Limits.Cpu().String() == "1"
		}},
		{"uid change policy deny", []string{"--uid-change-policy=deny"}, "", func(c *Config) bool { return c.Inject.UIDChangePolicy == inject.UIDChangeDeny }},
		{"uid change policy ignore", []string{"--uid-change-policy=ignore"}, "", func(c *Config) bool { return c.Inject.UIDChangePolicy == inject.UIDChangeIgnore }},
		{"uid change policy warn", []string{"--uid-change-policy=warn"}, "", func(c *Config) bool { return c.Inject.UIDChangePolicy == inject.UIDChangeWarn }},
		{"bad uid change policy", []string{"--uid-change-policy=block"}, "use warn, deny or ignore", nil},
		{"uid exemption", []string{"--sidecar-exemption=uid"}, "", func(c *Config) bool { return c.Inject.Exemption == inject.ExemptionUID }},
		{"bad exemption", []string{"--sidecar-exemption=mark"}, "use cgroup or uid", nil},
		{"cni mode", []string{"--redirect-mode=cni"}, "", func(c *Config) bool { return c.Inject.RedirectMode == inject.RedirectCNI }},
		{"bad redirect mode", []string{"--redirect-mode=ebpf"}, "use init or cni", nil},
		{"cni mode with the uid exemption", []string{"--redirect-mode=cni", "--sidecar-exemption=uid"}, "drop --sidecar-exemption=uid", nil},
		{"injection label", []string{"--namespace-injection-label=example.com/identities"}, "", func(c *Config) bool { return c.InjectionLabel == "example.com/identities" }},
		{"empty injection label", []string{"--namespace-injection-label="}, "--namespace-injection-label must name", nil},
		{"bad mode", []string{"--mode=sidecar"}, "use auto, native or classic", nil},
		{"sidecar log verbosity", []string{"--sidecar-log-verbosity=1"}, "", func(c *Config) bool { return c.Inject.SidecarLogVerbosity == 1 }},
		{"negative sidecar log verbosity", []string{"--sidecar-log-verbosity=-1"}, "--sidecar-log-verbosity=-1: use 0", nil},
		{"bad pull policy", []string{"--image-pull-policy=Sometimes"}, "use Always, IfNotPresent or Never", nil},
		{"root sidecar", []string{"--sidecar-uid=0"}, "non-root uid", nil},
		{"same ports", []string{"--sidecar-port=15080"}, "use two ports", nil},
		{"port out of range", []string{"--imds-port=70000"}, "between 1 and 65535", nil},
		{"bad quantity", []string{"--sidecar-cpu-limit=lots"}, "--sidecar-cpu-limit=\"lots\" is not a quantity", nil},
		{"request above limit", []string{"--init-memory-request=1Gi"}, "--init-memory-request exceeds --init-memory-limit", nil},
		{"no assigner", []string{"--assigner-username="}, "--assigner-username", nil},
		{"guard off by default", nil, "", func(c *Config) bool { return c.Inject.Placement == nil }},
		{"guard pool", []string{"--identity-pool-label=podidentity.io/pool=identities", "--identity-pool-taint=podidentity.io/pool=identities:NoExecute"}, "",
			func(c *Config) bool {
				p := c.Inject.Placement
				return p != nil && p.LabelKey == "podidentity.io/pool" && p.Toleration().Effect == corev1.TaintEffectNoExecute
			}},
		{"guard pool without taint", []string{"--identity-pool-label=podidentity.io/pool=identities"}, "needs both --identity-pool-label", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("flags %v not applied: %+v", tc.args, c.Inject)
			}
		})
	}
}

func TestNativeSidecars(t *testing.T) {
	tests := []struct {
		mode    Mode
		server  *version.Info
		want    bool
		wantErr bool
	}{
		{ModeNative, nil, true, false},
		{ModeClassic, &version.Info{Major: "1", Minor: "37"}, false, false},
		{ModeAuto, &version.Info{Major: "1", Minor: "28"}, false, false},
		{ModeAuto, &version.Info{Major: "1", Minor: "29"}, true, false},
		{ModeAuto, &version.Info{Major: "1", Minor: "30+"}, true, false},
		{ModeAuto, &version.Info{Major: "2", Minor: "0"}, true, false},
		{ModeAuto, &version.Info{Major: "1", Minor: "x"}, false, true},
		{ModeAuto, nil, false, true},
	}
	for _, tc := range tests {
		got, err := NativeSidecars(tc.mode, tc.server)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("NativeSidecars(%s, %+v) = %v, %v; want %v (error %v)", tc.mode, tc.server, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestImagePullSecretsFlag: --image-pull-secrets takes Secret names, comma-separated or repeated, and refuses at
// start what no Secret can be named (the API server would accept it in a pod, and only the kubelet would report
// it, pod by pod).
func TestImagePullSecretsFlag(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"none by default", nil, nil, ""},
		{"empty value", []string{"--image-pull-secrets="}, nil, ""},
		{"one", []string{"--image-pull-secrets=acr-pull"}, []string{"acr-pull"}, ""},
		{"comma-separated, in order", []string{"--image-pull-secrets=mirror,acr-pull"}, []string{"mirror", "acr-pull"}, ""},
		{"spaces around names", []string{"--image-pull-secrets= mirror , acr-pull "}, []string{"mirror", "acr-pull"}, ""},
		{"dots are allowed", []string{"--image-pull-secrets=registry.example.com"}, []string{"registry.example.com"}, ""},
		{"repeated flags add up", []string{"--image-pull-secrets=mirror", "--image-pull-secrets=acr-pull"}, []string{"mirror", "acr-pull"}, ""},
		{"duplicates once", []string{"--image-pull-secrets=mirror,acr-pull,mirror", "--image-pull-secrets=acr-pull"}, []string{"mirror", "acr-pull"}, ""},
		{"upper case", []string{"--image-pull-secrets=ACR-Pull"}, nil, `"ACR-Pull" is not a Secret name`},
		{"underscore", []string{"--image-pull-secrets=acr_pull"}, nil, `"acr_pull" is not a Secret name (a DNS-1123 subdomain`},
		{"a registry instead of a name", []string{"--image-pull-secrets=myacr.azurecr.io/podidentity"}, nil, "not a registry or a file"},
		{"too long", []string{"--image-pull-secrets=" + strings.Repeat("a", 254)}, nil, "at most 253 characters"},
		{"empty name in a list", []string{"--image-pull-secrets=mirror,,acr-pull"}, nil, "has an empty name"},
		{"trailing comma", []string{"--image-pull-secrets=mirror,"}, nil, "has an empty name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "image-pull-secrets") {
					t.Fatalf("error %v, want one naming --image-pull-secrets and containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.Inject.ImagePullSecrets, tc.want) {
				t.Errorf("ImagePullSecrets = %q, want %q", c.Inject.ImagePullSecrets, tc.want)
			}
		})
	}
}
