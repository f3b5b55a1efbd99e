package install_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podidentity/podidentity/cni/install"
	"github.com/podidentity/podidentity/cni/pluginconf"
)

// azureConflist is laid out as Azure CNI writes 10-azure.conflist (three-space indentation, no spaces after
// colons), with a vendor field the runtime ignores and the installer must keep.
const azureConflist = `{
   "cniVersion":"0.3.0",
   "name":"azure",
   "x-vendor":{"generation":7},
   "plugins":[
      {
         "type":"azure-vnet",
         "mode":"transparent",
         "ipsToRouteViaHost":["169.254.20.10"],
         "executable":"/opt/cni/bin/azure-vnet",
         "ipam":{
            "type":"azure-vnet-ipam"
         }
      },
      {
         "type":"portmap",
         "capabilities":{
            "portMappings":true
         },
         "snat":true
      }
   ]
}
`

const compactConflist = `{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}`

const bridgeConf = `{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "type": "bridge",
  "bridge": "cni0",
  "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}
}
`

func entry(image string) pluginconf.Entry {
	return pluginconf.NewEntry(pluginconf.Settings{
		Kubeconfig:       "/etc/cni/net.d/ZZZ-podidentity-cni-kubeconfig",
		SidecarImage:     image,
		InjectionLabel:   "podidentity.io/injection",
		ExemptNamespaces: []string{"kube-system", "podidentity-system"},
		FenceScope:       "all",
	})
}

// plugins parses a conflist as libcni does and returns its plugins' types.
func plugins(t *testing.T, data []byte) ([]string, []map[string]any) {
	t.Helper()
	var list types.NetConfList
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatalf("not a conflist: %v\n%s", err, data)
	}
	var raw struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range list.Plugins {
		out = append(out, p.Type)
	}
	return out, raw.Plugins
}

func mustChain(t *testing.T, name, data string, e pluginconf.Entry) install.ChainResult {
	t.Helper()
	res, err := install.Chain(name, []byte(data), e)
	if err != nil {
		t.Fatalf("Chain(%s): %v", name, err)
	}
	return res
}

func TestChainConflist(t *testing.T) {
	for _, tc := range []struct {
		name, file, data string
		wantTypes        []string
	}{
		{"formatted (Azure CNI)", "10-azure.conflist", azureConflist, []string{"azure-vnet", "portmap", "podidentity-cni"}},
		{"compact", "10-k.conflist", compactConflist, []string{"bridge", "portmap", "podidentity-cni"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := mustChain(t, tc.file, tc.data, entry("sidecar:1"))
			if !res.Changed || res.Name != tc.file || res.Replaces != "" {
				t.Fatalf("Chain = changed %v, name %q, replaces %q; want a change of %s in place", res.Changed, res.Name, res.Replaces, tc.file)
			}
			got, ps := plugins(t, res.Data)
			if strings.Join(got, ",") != strings.Join(tc.wantTypes, ",") {
				t.Errorf("plugins = %v, want %v", got, tc.wantTypes)
			}
			if ps[2]["sidecarImage"] != "sidecar:1" || ps[2]["kubeconfig"] != "/etc/cni/net.d/ZZZ-podidentity-cni-kubeconfig" {
				t.Errorf("our entry = %v", ps[2])
			}
			// Every byte up to the end of the last original plugin, and every byte after it, is kept.
			lastEnd := strings.LastIndex(tc.data, "}") // the file's closing brace
			lastPlugin := strings.LastIndex(tc.data[:strings.LastIndex(tc.data[:lastEnd], "]")], "}") + 1
			if !strings.HasPrefix(string(res.Data), tc.data[:lastPlugin]) || !strings.HasSuffix(string(res.Data), tc.data[lastPlugin:]) {
				t.Errorf("the original bytes around the new entry changed:\n%s", res.Data)
			}
			t.Logf("chained:\n%s", res.Data)

			again := mustChain(t, res.Name, string(res.Data), entry("sidecar:1"))
			if again.Changed || string(again.Data) != string(res.Data) {
				t.Errorf("a second Chain changed the file:\n%s", again.Data)
			}
			un, err := install.Unchain(res.Name, res.Data)
			if err != nil {
				t.Fatal(err)
			}
			if !un.Changed || un.Name != tc.file || string(un.Data) != tc.data {
				t.Errorf("Unchain did not restore the original bytes:\n--- got %s\n%s\n--- want\n%s", un.Name, un.Data, tc.data)
			}
			if un, err := install.Unchain(tc.file, []byte(tc.data)); err != nil || un.Changed {
				t.Errorf("Unchain of a file without our entry = changed %v, %v", un.Changed, err)
			}
		})
	}
}

func TestChainReplacesOurOlderEntryInPlace(t *testing.T) {
	old := mustChain(t, "10-azure.conflist", azureConflist, entry("sidecar:1"))
	// Another installer (Istio's, say) appended itself after us.
	withIstio, err := install.Chain(old.Name, old.Data, entry("sidecar:1"))
	if err != nil {
		t.Fatal(err)
	}
	data := strings.Replace(string(withIstio.Data), "\n   ]\n}", ",\n      {\"type\":\"istio-cni\"}\n   ]\n}", 1)
	if got, _ := plugins(t, []byte(data)); strings.Join(got, ",") != "azure-vnet,portmap,podidentity-cni,istio-cni" {
		t.Fatalf("setup: plugins = %v", got)
	}

	// Same settings: left where it is, so two installers that each append themselves do not take turns.
	same := mustChain(t, old.Name, data, entry("sidecar:1"))
	if same.Changed {
		t.Errorf("Chain moved an equal entry of ours:\n%s", same.Data)
	}
	// New settings (a new sidecar image after an upgrade): replaced where it is.
	upgraded := mustChain(t, old.Name, data, entry("sidecar:2"))
	got, ps := plugins(t, upgraded.Data)
	if strings.Join(got, ",") != "azure-vnet,portmap,podidentity-cni,istio-cni" || ps[2]["sidecarImage"] != "sidecar:2" {
		t.Errorf("after the upgrade plugins = %v, ours = %v", got, ps[2])
	}
	un, err := install.Unchain(upgraded.Name, upgraded.Data)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := plugins(t, un.Data); strings.Join(got, ",") != "azure-vnet,portmap,istio-cni" {
		t.Errorf("after Unchain plugins = %v", got)
	}
}

func TestChainCollapsesDuplicates(t *testing.T) {
	data := `{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"podidentity-cni","sidecarImage":"a"},{"type":"bridge"},` +
		`{"type":"podidentity-cni","sidecarImage":"b"},{"type":"portmap"}]}`
	res := mustChain(t, "10-k.conflist", data, entry("sidecar:1"))
	got, ps := plugins(t, res.Data)
	if strings.Join(got, ",") != "podidentity-cni,bridge,portmap" || ps[0]["sidecarImage"] != "sidecar:1" {
		t.Errorf("plugins = %v (ours %v), want one entry of ours, updated in place\n%s", got, ps[0], res.Data)
	}
	un, err := install.Unchain("10-k.conflist", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if string(un.Data) != `{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"bridge"},{"type":"portmap"}]}` {
		t.Errorf("Unchain = %s", un.Data)
	}
}

func TestChainConvertsASinglePluginFile(t *testing.T) {
	for _, file := range []string{"10-bridge.conf", "10-bridge.json"} {
		t.Run(file, func(t *testing.T) {
			res := mustChain(t, file, bridgeConf, entry("sidecar:1"))
			if res.Name != "10-bridge.conflist" || res.Replaces != file || !res.Changed {
				t.Fatalf("Chain = name %q, replaces %q, changed %v; want 10-bridge.conflist replacing %s", res.Name, res.Replaces, res.Changed, file)
			}
			got, ps := plugins(t, res.Data)
			if strings.Join(got, ",") != "bridge,podidentity-cni" || ps[0]["bridge"] != "cni0" {
				t.Errorf("plugins = %v (%v)", got, ps)
			}
			var head struct {
				CNIVersion string `json:"cniVersion"`
				Name       string `json:"name"`
			}
			if err := json.Unmarshal(res.Data, &head); err != nil || head.CNIVersion != "0.4.0" || head.Name != "mynet" {
				t.Errorf("conflist head = %+v, %v; want the original's cniVersion and name", head, err)
			}
			if !strings.Contains(string(res.Data), bridgeConf) {
				t.Errorf("the original is not embedded verbatim:\n%s", res.Data)
			}
			t.Logf("converted:\n%s", res.Data)

			again := mustChain(t, res.Name, string(res.Data), entry("sidecar:1"))
			if again.Changed {
				t.Error("a second Chain changed the converted file")
			}
			un, err := install.Unchain(res.Name, res.Data)
			if err != nil {
				t.Fatal(err)
			}
			if un.Name != file || un.Replaces != res.Name || string(un.Data) != bridgeConf {
				t.Errorf("Unchain = %s replacing %s:\n%s\nwant %s with the original bytes", un.Name, un.Replaces, un.Data, file)
			}
		})
	}
}

func TestChainRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, file, data, mention string
	}{
		{"not JSON", "10-x.conflist", `{"plugins": [`, "is not valid JSON"},
		{"not JSON (.conf)", "10-x.conf", `type: bridge`, "is not valid JSON"},
		{"trailing comma", "10-x.conflist", `{"plugins":[{"type":"bridge"},]}`, "is not valid JSON"},
		{"not an object", "10-x.conflist", `[{"type":"bridge"}]`, "not a JSON object"},
		{"no plugins", "10-x.conflist", `{"name":"x","type":"bridge"}`, `no "plugins"`},
		{"plugins not an array", "10-x.conflist", `{"plugins":{"type":"bridge"}}`, "not an array"},
		{"no plugin", "10-x.conflist", `{"plugins":[]}`, "is empty"},
		{"plugin without type", "10-x.conflist", `{"plugins":[{"name":"x"}]}`, `has no "type"`},
		{"plugin not an object", "10-x.conflist", `{"plugins":["bridge"]}`, "is not an object"},
		{"two plugins keys", "10-x.conflist", `{"plugins":[{"type":"a"}],"plugins":[{"type":"b"}]}`, "appears twice"},
		{".conf without type", "10-x.conf", `{"name":"x","plugins":[{"type":"bridge"}]}`, `has no "type"`},
		{".conf of our plugin alone", "10-x.conf", `{"name":"x","type":"podidentity-cni"}`, "alone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := install.Chain(tc.file, []byte(tc.data), entry("sidecar:1"))
			if err == nil || !strings.Contains(err.Error(), tc.mention) || !strings.Contains(err.Error(), tc.file) {
				t.Errorf("Chain = %v, want an error naming %s and saying %q", err, tc.file, tc.mention)
			}
		})
	}
}

func TestFirstConf(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{[]string{"10-azure.conflist", "99-loopback.conf", "ZZZ-podidentity-cni-kubeconfig"}, "10-azure.conflist"},
		{[]string{"99-loopback.conf", "05-cilium.conf", "10-azure.conflist"}, "05-cilium.conf"},
		{[]string{"10-x.json", "10-x.conflist"}, "10-x.conflist"},
		{[]string{"10-x.conf", "10-x.conflist"}, "10-x.conf"},
		{[]string{"b.conf", "A.conflist"}, "A.conflist"}, // byte order: upper case first
		{[]string{".10-x.conflist.tmp", "README", "10-x.conflist.bak", "20-y.conf"}, "20-y.conf"},
		{[]string{"ZZZ-podidentity-cni-kubeconfig", "notes.txt"}, ""},
		{nil, ""},
	} {
		got, ok := install.FirstConf(tc.names)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("FirstConf(%v) = %q, %v; want %q", tc.names, got, ok, tc.want)
		}
	}
}

func TestHasEntry(t *testing.T) {
	chained := mustChain(t, "10-azure.conflist", azureConflist, entry("x"))
	for _, tc := range []struct {
		file, data string
		want       bool
	}{
		{"10-azure.conflist", azureConflist, false},
		{"10-azure.conflist", string(chained.Data), true},
		{"10-bridge.conf", bridgeConf, false},
	} {
		if got, err := install.HasEntry(tc.file, []byte(tc.data)); err != nil || got != tc.want {
			t.Errorf("HasEntry(%s) = %v, %v; want %v", tc.file, got, err, tc.want)
		}
	}
	if _, err := install.HasEntry("x.conflist", []byte("{")); err == nil {
		t.Error("HasEntry accepted invalid JSON")
	}
}

func TestKubeconfig(t *testing.T) {
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	b, err := install.Kubeconfig("https://10.0.0.1:443", ca, "tok3n")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(b)
	if err != nil {
		t.Fatalf("the rendered kubeconfig does not load: %v\n%s", err, b)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil {
		t.Fatalf("no current context:\n%s", b)
	}
	cluster, user := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	if cluster.Server != "https://10.0.0.1:443" || string(cluster.CertificateAuthorityData) != string(ca) || user.Token != "tok3n" {
		t.Errorf("kubeconfig = server %q, ca %q, token %q", cluster.Server, cluster.CertificateAuthorityData, user.Token)
	}
	rest, err := clientcmd.RESTConfigFromKubeConfig(b)
	if err != nil || rest.Host != "https://10.0.0.1:443" || rest.BearerToken != "tok3n" {
		t.Errorf("REST config = %+v, %v", rest, err)
	}

	for _, tc := range []struct {
		server, token string
		ca            []byte
		mention       string
	}{
		{"http://10.0.0.1", "t", ca, "not an https URL"},
		{"10.0.0.1:443", "t", ca, "not an https URL"},
		{"https://10.0.0.1", "t", nil, "CA is empty"},
		{"https://10.0.0.1", "", ca, "token is empty"},
	} {
		if _, err := install.Kubeconfig(tc.server, tc.ca, tc.token); err == nil || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Kubeconfig(%q, %q) = %v, want an error saying %q", tc.server, tc.token, err, tc.mention)
		}
	}
}
