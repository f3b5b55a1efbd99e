package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRegistryNodeConfig checks, without starting anything, that containerd is pointed at the registry's
// hosts.toml and that it trusts the cluster CA for it and carries no credentials (pods bring theirs).
func TestRegistryNodeConfig(t *testing.T) {
	c := &Cluster{opts: Options{StateDir: t.TempDir(), NodeName: "node-1"}}
	cfg := containerdConfig(c.opts.StateDir, "/cni/bin", "/cni/conf", c.registryHostsDir())
	if !strings.Contains(cfg, `config_path = "`+c.registryHostsDir()+`"`) {
		t.Errorf("containerd.toml has no config_path %s:\n%s", c.registryHostsDir(), cfg)
	}
	if strings.Contains(cfg, "auth") {
		t.Errorf("containerd.toml carries registry credentials:\n%s", cfg)
	}
	hosts := registryHostsTOML(RegistryHost, c.ClusterCA())
	for _, want := range []string{
		`server = "https://` + RegistryHost + `"`,
		`[host."https://` + RegistryHost + `"]`,
		`capabilities = ["pull", "resolve"]`,
		`ca = "` + filepath.Join(c.opts.StateDir, "pki", "ca.crt") + `"`,
	} {
		if !strings.Contains(hosts, want) {
			t.Errorf("hosts.toml lacks %s:\n%s", want, hosts)
		}
	}
}

func TestRegistryAuth(t *testing.T) {
	c := &Cluster{opts: Options{StateDir: t.TempDir()}}
	if _, _, err := c.RegistryAuth(); err == nil {
		t.Error("credentials read before the registry wrote them")
	}
	if err := os.MkdirAll(c.RegistryDockerConfig(), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		config         string
		user, password string
		ok             bool
	}{
		{`{"auths":{"` + RegistryHost + `":{"username":"u","password":"p","auth":"dTpw"}}}`, "u", "p", true},
		{`{"auths":{"other:5000":{"username":"u","password":"p"}}}`, "", "", false},
		{`{"auths":`, "", "", false},
	} {
		if err := os.WriteFile(filepath.Join(c.RegistryDockerConfig(), "config.json"), []byte(tc.config), 0o600); err != nil {
			t.Fatal(err)
		}
		user, password, err := c.RegistryAuth()
		if (err == nil) != tc.ok || user != tc.user || password != tc.password {
			t.Errorf("RegistryAuth of %s = %q, %q, %v", tc.config, user, password, err)
		}
	}
}
