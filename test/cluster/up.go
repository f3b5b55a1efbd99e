package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Addresses of the fake cloud.
const (
	// IMDSAdminAddress serves the IMDS emulator's admin API (test/emulators/imds README), loopback only.
	IMDSAdminAddress = "127.0.0.1:18170"
	// ARMPort and AADPort serve ARM and Azure AD over HTTPS on NodeIP (Azure AD on 443: pods reach it as
	// https://login.microsoftonline.com/).
	ARMPort = 18443
	AADPort = 443
	// TenantID of the emulated tenant.
	TenantID = "00000000-0000-0000-0000-0000000000b2"
	// AssignerClientID and AssignerSecret are the service principal the emulated Azure AD knows: the
	// assigner authenticates with them (azure.json in a Secret).
	AssignerClientID = "00000000-0000-0000-0000-0000000000c3"
	AssignerSecret   = "emulated-assigner-secret"
)

// ARMEndpoint is the URL of the emulated ARM, reachable from pods.
func ARMEndpoint() string { return fmt.Sprintf("https://%s:%d", NodeIP, ARMPort) }

// bringUp starts every component from a clean state directory and waits for each.
func (c *Cluster) bringUp(ctx context.Context) error {
	c.began = time.Now()
	st := c.opts.StateDir
	if err := os.MkdirAll(st, 0o755); err != nil {
		return err
	}
	entries, _ := os.ReadDir(st)
	for _, e := range entries {
		if e.Name() == "cache" {
			continue // built helper binaries and the pause image survive restarts
		}
		if err := os.RemoveAll(filepath.Join(st, e.Name())); err != nil {
			return fmt.Errorf("cleaning the state directory (a mount left behind? run Stop): %w", err)
		}
	}
	c.logf("state directory %s", st)
	if err := c.writePKI(); err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}
	if err := c.writeKubeconfigs(); err != nil {
		return err
	}
	if err := c.writeNodeConfigs(); err != nil {
		return err
	}
	c.logf("building the fake cloud and the pause image")
	if err := c.buildHelpers(ctx); err != nil {
		return err
	}
	c.logf("built (%.1fs)", time.Since(c.began).Seconds())
	if err := setUpHost(c.opts.Log); err != nil {
		return fmt.Errorf("preparing the host network: %w", err)
	}
	b := c.opts.BinDir
	pki := c.pkiDir()
	cache := filepath.Join(st, "cache")
	if err := c.startComponent("etcd", filepath.Join(b, "etcd"), "--name=default", "--data-dir="+filepath.Join(st, "etcd"),
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdClientPort), fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdClientPort),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeerPort), fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeerPort),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", etcdPeerPort), "--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	if err := c.startComponent("fakecloud", filepath.Join(cache, "fakecloud"), "--imds-address="+IMDSAddress+":80", "--admin-address="+IMDSAdminAddress,
		fmt.Sprintf("--arm-address=%s:%d", NodeIP, ARMPort), fmt.Sprintf("--aad-address=%s:%d", NodeIP, AADPort),
		"--cert="+filepath.Join(pki, "fakecloud.crt"), "--key="+filepath.Join(pki, "fakecloud.key"),
		"--dns-address="+NodeIP+":53", "--dns-names="+AADHost, "--dns-answer="+NodeIP,
		"--tenant-id="+TenantID, "--vmss-id="+VMSSID, "--instance-id="+VMSSInstanceID,
		"--app-client-id="+AssignerClientID, "--app-secret="+AssignerSecret,
		// Its Azure AD fetches the cluster's issuer documents over TLS, from the API server's certificate.
		"--issuer-ca-file="+filepath.Join(pki, "ca.crt")); err != nil {
		return err
	}
	// The node's registry: the product is pushed there (package product) and pulled by containerd.
	if err := c.startComponent("registry", filepath.Join(cache, "registry"), "--addr="+RegistryHost, "--user="+RegistryUser,
		"--dir="+filepath.Join(st, "registry", "data"), "--out="+c.RegistryDockerConfig(),
		"--cert="+filepath.Join(pki, "registry.crt"), "--key="+filepath.Join(pki, "registry.key"), "--ca="+c.ClusterCA()); err != nil {
		return err
	}
	containerd, _ := lookPath("containerd")
	if err := c.startComponent("containerd", containerd, "--config="+filepath.Join(c.confDir(), "containerd.toml")); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "etcd", func(ctx context.Context) error {
		return httpOK(ctx, fmt.Sprintf("http://127.0.0.1:%d/health", etcdClientPort))
	}); err != nil {
		return err
	}
	if err := c.startComponent("kube-apiserver", filepath.Join(b, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdClientPort),
		"--bind-address="+NodeIP, "--advertise-address="+NodeIP, "--secure-port="+strconv.Itoa(APIServerPort),
		"--service-cluster-ip-range="+ServiceCIDR,
		"--tls-cert-file="+filepath.Join(pki, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(pki, "apiserver.key"),
		"--client-ca-file="+filepath.Join(pki, "ca.crt"),
		"--service-account-key-file="+filepath.Join(pki, "service-account.pub"),
		"--service-account-signing-key-file="+filepath.Join(pki, "service-account.key"),
		// The first issuer is the one tokens are signed with: a URL the fake cloud's Azure AD reaches for the
		// discovery document and keys of federated identities (test/suites/e2e/federation_test.go), as Azure AD reaches
		// an AKS cluster's OIDC issuer. The in-cluster name stays accepted for tokens signed before.
		"--service-account-issuer="+IssuerURL, "--service-account-jwks-uri="+IssuerURL+"/openid/v1/jwks",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
		"--kubelet-client-certificate="+filepath.Join(pki, "apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+filepath.Join(pki, "apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority="+filepath.Join(pki, "ca.crt"),
		"--kubelet-preferred-address-types=InternalIP,Hostname"); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "fakecloud", func(ctx context.Context) error {
		return httpOK(ctx, "http://"+IMDSAdminAddress+"/healthz")
	}); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "registry", func(ctx context.Context) error { return c.registryAnswers(ctx) }); err != nil {
		return err
	}
	if err := c.waitContainerd(ctx); err != nil {
		return err
	}
	if err := c.ImportImage(ctx, filepath.Join(cache, "pause.tar")); err != nil {
		return err
	}
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver", func(ctx context.Context) error {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}); err != nil {
		return err
	}
	auth := func(name string) []string {
		k := c.kubeconfig(name)
		return []string{"--kubeconfig=" + k, "--authentication-kubeconfig=" + k, "--authorization-kubeconfig=" + k,
			"--bind-address=127.0.0.1", "--leader-elect=false"}
	}
	if err := c.startComponent("kube-controller-manager", filepath.Join(b, "kube-controller-manager"), append(auth("controller-manager"),
		// No node IPAM: the CNI's host-local range is the pod network.
		"--controllers=*,-node-ipam-controller", "--use-service-account-credentials=true",
		"--service-account-private-key-file="+filepath.Join(pki, "service-account.key"),
		"--root-ca-file="+filepath.Join(pki, "ca.crt"))...); err != nil {
		return err
	}
	if err := c.startComponent("kube-scheduler", filepath.Join(b, "kube-scheduler"), auth("scheduler")...); err != nil {
		return err
	}
	if err := c.startComponent("kube-proxy", filepath.Join(b, "kube-proxy"), "--config="+filepath.Join(c.confDir(), "kube-proxy.yaml")); err != nil {
		return err
	}
	if err := c.startKubelet(ctx, cs); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-proxy", func(ctx context.Context) error {
		return httpOK(ctx, "http://127.0.0.1:10256/healthz")
	}); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-controller-manager", func(ctx context.Context) error {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	c.logf("node %s Ready, %.1fs after start", c.opts.NodeName, time.Since(c.began).Seconds())
	return nil
}

// healthy reports why the cluster of the state directory cannot be reused, or nil.
func (c *Cluster) healthy(ctx context.Context) error {
	for _, name := range componentOrder() {
		if err := componentAlive(c.opts.StateDir, name); err != nil {
			return err
		}
	}
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return fmt.Errorf("kube-apiserver not ready: %w", err)
	}
	if err := httpOK(ctx, "http://"+IMDSAdminAddress+"/healthz"); err != nil {
		return fmt.Errorf("fakecloud: %w", err)
	}
	if err := c.registryAnswers(ctx); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	return nodeReady(ctx, cs, c.opts.NodeName)
}

func (c *Cluster) startComponent(name, binary string, args ...string) error {
	return startProcess(c.opts.StateDir, name, binary, args, nil)
}

// waitFor polls check until it succeeds, the component's process exits, or ReadyTimeout passes; the error
// names the component.
func (c *Cluster) waitFor(ctx context.Context, name string, check func(context.Context) error) error {
	deadline := time.Now().Add(c.opts.ReadyTimeout)
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			c.logf("%s ready (%.1fs)", name, time.Since(c.began).Seconds())
			return nil
		}
		if err := componentAlive(c.opts.StateDir, name); err != nil {
			return fmt.Errorf("%s exited before it was ready (see %s): %w", name, filepath.Join(c.logDir(), name+".log"), last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not become ready within %s (see %s): %w", name, c.opts.ReadyTimeout, filepath.Join(c.logDir(), name+".log"), last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) clientset() (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func nodeReady(ctx context.Context, cs kubernetes.Interface, name string) error {
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status == corev1.ConditionTrue {
				return nil
			}
			return fmt.Errorf("node %s not Ready: %s", name, cond.Message)
		}
	}
	return fmt.Errorf("node %s has no Ready condition yet", name)
}

func httpOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// registryAnswers checks that the registry serves the API over TLS with the cluster CA's certificate and
// accepts its credentials.
func (c *Cluster) registryAnswers(ctx context.Context) error {
	ca, err := os.ReadFile(c.ClusterCA())
	if err != nil {
		return err
	}
	user, password, err := c.RegistryAuth()
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+RegistryHost+"/v2/", nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(user, password)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("https://%s/v2/ with the registry's credentials: %s", RegistryHost, resp.Status)
	}
	return nil
}

// buildHelpers builds the fake cloud and the pause program, and the pause image, into StateDir/cache.
func (c *Cluster) buildHelpers(ctx context.Context) error {
	cache := filepath.Join(c.opts.StateDir, "cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	for name, pkg := range map[string]string{"fakecloud": "./test/emulators/fakecloud/cmd/fakecloud", "pause": "./test/cluster/pause", "registry": "./test/toolbox/registry/cmd/registry"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(cache, name), pkg)
		cmd.Dir = c.opts.RepoDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %w\n%s", pkg, err, out)
		}
	}
	tar := filepath.Join(cache, "pause.tar")
	if _, err := os.Stat(tar); err == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.opts.BinDir, "imagebuild"), "--binary", filepath.Join(cache, "pause"),
		"--uid", "65535", "--ca-bundle=", "--tag", PauseImage, "--out", tar)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the pause image: %w\n%s", err, out)
	}
	return nil
}

// ImportImage loads an image tarball (docker or OCI archive, e.g. from `make images`) into the node's
// containerd; pods use it without pulling when their image reference has a non-latest tag.
func (c *Cluster) ImportImage(ctx context.Context, tar string) error {
	if out, err := c.ctr(ctx, "images", "import", tar); err != nil {
		return fmt.Errorf("importing %s into containerd: %w\n%s", tar, err, out)
	}
	return nil
}

func (c *Cluster) ctr(ctx context.Context, args ...string) ([]byte, error) {
	ctr, err := lookPath("ctr")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, ctr, append([]string{"--address", c.containerdSocket(), "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, errors.New(strings.TrimSpace(string(out)))
	}
	return out, nil
}

// BuildAndImportGoImage builds the Go main package pkg (a path relative to the repository, e.g.
// ./test/cluster/internal/probe) as a static binary into an image tagged ref that runs as uid, and imports
// it into the node's containerd.
func (c *Cluster) BuildAndImportGoImage(ctx context.Context, pkg, ref string, uid int) error {
	dir, err := os.MkdirTemp(filepath.Join(c.opts.StateDir, "cache"), "image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, pkg)
	cmd.Dir = c.opts.RepoDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", pkg, err, out)
	}
	tar := filepath.Join(dir, "image.tar")
	cmd = exec.CommandContext(ctx, filepath.Join(c.opts.BinDir, "imagebuild"), "--binary", bin, "--uid", strconv.Itoa(uid), "--tag", ref, "--out", tar)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the image of %s: %w\n%s", pkg, err, out)
	}
	return c.ImportImage(ctx, tar)
}
