package pluginconf_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/cni/pluginconf"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
)

const prev = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.1.0.5/24","interface":0}]}`

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, stdin string
		check       func(t *testing.T, c *pluginconf.Config)
		mention     string
	}{
		{name: "minimal, defaults filled in", stdin: `{"cniVersion":"1.0.0","name":"k8s","type":"podidentity-cni","kubeconfig":"/k","sidecarImage":"s:1",` + prev + `}`,
			check: func(t *testing.T, c *pluginconf.Config) {
				p, err := c.Policy()
				if err != nil || p.InjectionLabel != contract.NamespaceInjectionLabel || p.Scope != imdspolicy.ScopeAll || p.SidecarImage != "s:1" {
					t.Errorf("Policy = %+v, %v", p, err)
				}
				r, err := c.Redirect()
				if err != nil || r.IMDSAddress.String() != contract.IMDSAddress || r.IMDSPort != contract.IMDSPort || r.SidecarPort != contract.SidecarPort {
					t.Errorf("Redirect = %+v, %v", r, err)
				}
				if c.PrevResult == nil {
					t.Error("prevResult not parsed")
				}
			}},
		{name: "every field", stdin: `{"cniVersion":"0.4.0","name":"k8s","type":"podidentity-cni","kubeconfig":"/k","imdsAddress":"169.254.169.253","imdsPort":8080,` +
			`"sidecarPort":15090,"sidecarImage":"s:1","injectionLabel":"x.io/inject","exemptNamespaces":["kube-system","ops"],"fenceScope":"opted-in","failureDir":"/f"}`,
			check: func(t *testing.T, c *pluginconf.Config) {
				p, _ := c.Policy()
				r, _ := c.Redirect()
				if p.InjectionLabel != "x.io/inject" || p.Scope != imdspolicy.ScopeOptedIn || !p.Exempt("ops") || r.IMDSPort != 8080 ||
					r.SidecarPort != 15090 || r.IMDSAddress.String() != "169.254.169.253" || c.FailureDir != "/f" || c.PrevResult != nil {
					t.Errorf("parsed %+v / %+v / %+v", c.Settings, p, r)
				}
			}},
		{name: "not JSON", stdin: `{"kubeconfig":`, mention: "not valid JSON"},
		{name: "no kubeconfig", stdin: `{"cniVersion":"1.0.0","name":"k","sidecarImage":"s"}`, mention: `no "kubeconfig"`},
		{name: "no sidecar image", stdin: `{"cniVersion":"1.0.0","name":"k","kubeconfig":"/k"}`, mention: `"sidecarImage" is empty`},
		{name: "bad fence scope", stdin: `{"cniVersion":"1.0.0","name":"k","kubeconfig":"/k","sidecarImage":"s","fenceScope":"some"}`, mention: `"fenceScope"`},
		{name: "bad IMDS address", stdin: `{"cniVersion":"1.0.0","name":"k","kubeconfig":"/k","sidecarImage":"s","imdsAddress":"imds"}`, mention: "not an IP address"},
		{name: "IPv6 IMDS address", stdin: `{"cniVersion":"1.0.0","name":"k","kubeconfig":"/k","sidecarImage":"s","imdsAddress":"fd00::1"}`, mention: "not IPv4"},
		{name: "bad prevResult", stdin: `{"cniVersion":"1.0.0","name":"k","kubeconfig":"/k","sidecarImage":"s","prevResult":{"ips":"no"}}`, mention: "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := pluginconf.Parse([]byte(tc.stdin))
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

// TestEntryRoundTrip: what the agent writes is what the plugin reads.
func TestEntryRoundTrip(t *testing.T) {
	s := pluginconf.Settings{Kubeconfig: "/etc/cni/net.d/ZZZ-podidentity-cni-kubeconfig", SidecarImage: "s:1", IMDSPort: 80,
		SidecarPort: 15079, IMDSAddress: "169.254.169.254", InjectionLabel: "podidentity.io/injection",
		ExemptNamespaces: []string{"kube-system"}, FenceScope: "all", FailureDir: "/var/run/podidentity-cni"}
	b, err := json.Marshal(pluginconf.NewEntry(s))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if m["type"] != pluginconf.PluginType {
		t.Errorf("entry type = %v", m["type"])
	}
	stdin := strings.TrimSuffix(string(b), "}") + `,"cniVersion":"1.0.0","name":"k8s"}`
	c, err := pluginconf.Parse([]byte(stdin))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(c.Settings); string(got) != string(mustJSON(t, s)) {
		t.Errorf("round trip: %s, want %s", got, mustJSON(t, s))
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
