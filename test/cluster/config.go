package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podidentity/podidentity/test/toolbox/pki"
)

// writePKI creates the cluster CA and every certificate the components use, the service-account signing
// key, and the fake cloud's own CA and serving certificate (a separate CA: it is what the assigner trusts).
func (c *Cluster) writePKI() error {
	dir := c.pkiDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	nodeIP, svcIP := net.ParseIP(NodeIP), net.ParseIP(KubernetesServiceIP)
	ca := pki.SelfSigned(pki.Spec{CommonName: "podidentity-test-cluster-ca", CA: true, Validity: certValidity})
	if err := writePair(dir, "ca", ca); err != nil {
		return err
	}
	node := c.opts.NodeName
	for _, s := range []issued{
		{"apiserver", pki.Spec{CommonName: "kube-apiserver", Server: true, IPs: []net.IP{nodeIP, svcIP, net.ParseIP("127.0.0.1")},
			DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}}},
		{"apiserver-kubelet-client", pki.Spec{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true}},
		{"admin", pki.Spec{CommonName: "podidentity-admin", Organization: []string{"system:masters"}, Client: true}},
		{"controller-manager", pki.Spec{CommonName: "system:kube-controller-manager", Client: true}},
		{"scheduler", pki.Spec{CommonName: "system:kube-scheduler", Client: true}},
		{"kube-proxy", pki.Spec{CommonName: "system:kube-proxy", Client: true}},
		{"kubelet-client", pki.Spec{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}, Client: true}},
		{"kubelet-serving", pki.Spec{CommonName: node, Server: true, IPs: []net.IP{nodeIP}, DNSNames: []string{node}}},
		{"registry", pki.Spec{CommonName: "podidentity test registry", Server: true, IPs: []net.IP{net.ParseIP("127.0.0.1"), nodeIP}}},
	} {
		s.spec.Validity = certValidity
		if err := writePair(dir, s.file, ca.Issue(s.spec)); err != nil {
			return err
		}
	}
	if err := writeSigningKey(dir, "service-account"); err != nil {
		return err
	}
	azureCA := pki.SelfSigned(pki.Spec{CommonName: "podidentity emulated Azure CA", CA: true, Validity: certValidity})
	if err := writePair(dir, "azure-ca", azureCA); err != nil {
		return err
	}
	return writePair(dir, "fakecloud", azureCA.Issue(pki.Spec{CommonName: "emulated Azure", Server: true,
		IPs: []net.IP{nodeIP}, DNSNames: []string{AADHost}, Validity: certValidity}))
}

// writeKubeconfigs writes one kubeconfig per client identity, certificates embedded.
func (c *Cluster) writeKubeconfigs() error {
	if err := os.MkdirAll(filepath.Join(c.opts.StateDir, "kubeconfig"), 0o755); err != nil {
		return err
	}
	ca, err := os.ReadFile(filepath.Join(c.pkiDir(), "ca.crt"))
	if err != nil {
		return err
	}
	for name, certFile := range map[string]string{"admin": "admin", "controller-manager": "controller-manager",
		"scheduler": "scheduler", "kube-proxy": "kube-proxy", "kubelet": "kubelet-client"} {
		crt, err := os.ReadFile(filepath.Join(c.pkiDir(), certFile+".crt"))
		if err != nil {
			return err
		}
		key, err := os.ReadFile(filepath.Join(c.pkiDir(), certFile+".key"))
		if err != nil {
			return err
		}
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["podidentity-test"] = &clientcmdapi.Cluster{Server: fmt.Sprintf("https://%s:%d", NodeIP, APIServerPort), CertificateAuthorityData: ca}
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
		cfg.Contexts["podidentity-test"] = &clientcmdapi.Context{Cluster: "podidentity-test", AuthInfo: name}
		cfg.CurrentContext = "podidentity-test"
		if err := clientcmd.WriteToFile(*cfg, c.kubeconfig(name)); err != nil {
			return err
		}
	}
	return nil
}

// writeNodeConfigs writes containerd's, the CNI's, the kubelet's and kube-proxy's configuration.
func (c *Cluster) writeNodeConfigs() error {
	st := c.opts.StateDir
	for _, d := range []string{c.confDir(), c.CNIConfDir(), c.CNIBinDir(), filepath.Join(st, "containerd")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The node's CNI binaries: the host's, linked into a directory of the cluster's own, so that a chained
	// plugin installed by a DaemonSet (podidentity's CNI mode) lands there and not in the host's /usr/lib/cni.
	plugins, err := os.ReadDir(hostCNIBinDir)
	if err != nil {
		return fmt.Errorf("the host's CNI plugins in %s: %w", hostCNIBinDir, err)
	}
	for _, p := range plugins {
		if err := os.Symlink(filepath.Join(hostCNIBinDir, p.Name()), filepath.Join(c.CNIBinDir(), p.Name())); err != nil && !os.IsExist(err) {
			return err
		}
	}
	files := map[string]string{
		filepath.Join(c.confDir(), "containerd.toml"):                   containerdConfig(st, c.CNIBinDir(), c.CNIConfDir(), c.registryHostsDir()),
		filepath.Join(c.registryHostsDir(), RegistryHost, "hosts.toml"): registryHostsTOML(RegistryHost, c.ClusterCA()),
		c.PrimaryCNIConfig(): c.primaryCNIConfigContent(),
		// Pods (dnsPolicy ClusterFirst without cluster DNS falls back to this) ask the fake cloud's DNS, which
		// knows only Azure's names; nothing leaks to the host's resolver.
		filepath.Join(c.confDir(), "resolv.conf"):     "nameserver " + NodeIP + "\n",
		filepath.Join(c.confDir(), "kubelet.yaml"):    c.kubeletConfig(),
		filepath.Join(c.confDir(), "kube-proxy.yaml"): c.kubeProxyConfig(),
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// hostCNIBinDir holds the host's CNI plugins (Debian's containernetworking-plugins).
const hostCNIBinDir = "/usr/lib/cni"

// CNIBinDir is the node's CNI binary directory (the runtime's bin_dir).
func (c *Cluster) CNIBinDir() string { return filepath.Join(c.opts.StateDir, "cni", "bin") }

// CNIConfDir is the node's CNI configuration directory (the runtime's conf_dir).
func (c *Cluster) CNIConfDir() string { return filepath.Join(c.opts.StateDir, "cni", "net.d") }

// PrimaryCNIConfig is the node's network configuration list, the one the runtime loads (the first file).
func (c *Cluster) PrimaryCNIConfig() string {
	return filepath.Join(c.CNIConfDir(), "10-podidentity.conflist")
}

// RewritePrimaryCNIConfig writes the node's network configuration list afresh, as a primary CNI does at start
// or upgrade: whatever was chained into it is gone.
func (c *Cluster) RewritePrimaryCNIConfig() error {
	return os.WriteFile(c.PrimaryCNIConfig(), []byte(c.primaryCNIConfigContent()), 0o644)
}

// primaryCNIConfigContent is the bridge with host-local addresses; containerd's CRI brings lo up itself
// (loopback plugin). No ipMasq (pods only talk to the node) and no portmap (no hostPort in the tests): both
// would add iptables rules per pod that a killed pod leaves behind.
func (c *Cluster) primaryCNIConfigContent() string {
	st := c.opts.StateDir
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "podidentity",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q}]]
      }
    }
  ]
}
`, BridgeName, filepath.Join(st, "cni", "ipam"), PodCIDR)
}

// containerdConfig is a private containerd: its own root, state, socket, opt and runc directories, so the
// system containerd (if any) is neither used nor disturbed.
func containerdConfig(st, cniBin, cniConf, hostsDir string) string {
	cd := filepath.Join(st, "containerd")
	return fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # This machine lacks CAP_SYS_RESOURCE: without it every sandbox fails ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  # Registry hosts (hosts.toml per host): the node's registry, trusted through the cluster CA. No credentials
  # here: the kubelet passes each pod's pull secrets, as on a node without a credential provider.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), filepath.Join(cd, "containerd.sock"),
		filepath.Join(cd, "containerd.sock.ttrpc"), filepath.Join(cd, "opt"), PauseImage,
		filepath.Join(st, "runc"), cniBin, cniConf, hostsDir)
}

// registryHostsTOML is containerd's hosts.toml for a registry host served over TLS with a certificate of ca:
// pull and resolve only (nothing pushes through the node).
func registryHostsTOML(host, ca string) string {
	return fmt.Sprintf(`server = "https://%s"

[host."https://%s"]
  capabilities = ["pull", "resolve"]
  ca = %q
`, host, host, ca)
}

// registryHostsDir is containerd's config_path: <dir>/<host>/hosts.toml.
func (c *Cluster) registryHostsDir() string { return filepath.Join(c.confDir(), "certs.d") }

func (c *Cluster) kubeletConfig() string {
	pki := c.pkiDir()
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
providerID: %q
containerRuntimeEndpoint: unix://%s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
tlsCertFile: %q
tlsPrivateKeyFile: %q
# cgroup v1 host: allowed explicitly since 1.35; cgroupfs because systemd does not manage this machine.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
# No node allocatable enforcement and no eviction: a test node shares a small machine.
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: %q
podLogsDir: %q
serializeImagePulls: false
maxPods: 110
`, NodeIP, ProviderID, c.containerdSocket(), filepath.Join(pki, "ca.crt"),
		filepath.Join(pki, "kubelet-serving.crt"), filepath.Join(pki, "kubelet-serving.key"),
		filepath.Join(c.confDir(), "resolv.conf"), filepath.Join(c.opts.StateDir, "pod-logs"))
}

func (c *Cluster) kubeProxyConfig() string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
hostnameOverride: %q
mode: iptables
clusterCIDR: %q
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Zero values: kube-proxy leaves the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  # true would set net.ipv4.conf.all.route_localnet on the host.
  localhostNodePorts: false
`, c.kubeconfig("kube-proxy"), c.opts.NodeName, PodCIDR, NodeIP)
}

// Identity of the emulated subscription: the scale set the node belongs to, and the node's instance in it.
const (
	SubscriptionID = "00000000-0000-0000-0000-0000000000a1"
	ResourceGroup  = "MC_podidentity_test_eastus"
	VMSSID         = "/subscriptions/" + SubscriptionID + "/resourceGroups/" + ResourceGroup + "/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-12345678-vmss"
	// VMSSInstanceID is the node's VM: instance 0 of the scale set.
	VMSSInstanceID = VMSSID + "/virtualMachines/0"
	// ProviderID is the node's spec.providerID, as the Azure cloud provider sets it.
	ProviderID = "azure://" + VMSSInstanceID
)

// UserAssignedIdentityID is the ARM id of a user-assigned identity named name in the emulated subscription.
func UserAssignedIdentityID(name string) string {
	return "/subscriptions/" + SubscriptionID + "/resourceGroups/" + ResourceGroup + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

// AADHost is Azure AD's public authority host. The fake cloud's DNS answers it with NodeIP (its certificate
// holds the name), so pods authenticate against the emulated Azure AD under the real, trusted authority name
// and MSAL skips instance discovery, which would need the internet.
const AADHost = "login.microsoftonline.com"
