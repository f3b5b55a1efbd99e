// Package cluster brings up and tears down a throwaway single-node Kubernetes cluster on this machine, from
// the source-built binaries in bin/ (kube-apiserver, etcd, kube-controller-manager, kube-scheduler,
// kube-proxy, kubelet), the host's containerd and runc (run as a private instance with its own socket and
// directories), the host's CNI plugins, and an emulated Azure (package fakecloud, run as a process) that
// answers as the node's IMDS on 169.254.169.254:80.
//
// One cluster at a time per host: Start takes a host-wide lock that the returned Cluster holds until Stop or
// Release (or the process exits), because the cluster needs host-wide resources (169.254.169.254:80, the
// node address on lo, kube-proxy's iptables chains). Root on Linux is required.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Fixed addresses of the cluster: one cluster per host, so constants are enough, and tests and the demo can
// name them.
const (
	// NodeIP is the node's address: a /32 added to lo that the API server advertises and pods reach through
	// the bridge gateway.
	NodeIP = "172.31.254.1"
	// PodCIDR is the bridge network of the pods (the bridge holds its first address, the gateway).
	PodCIDR = "10.244.0.0/24"
	// ServiceCIDR holds ClusterIPs; the first one is the kubernetes Service.
	ServiceCIDR = "10.96.0.0/16"
	// KubernetesServiceIP is the ClusterIP of default/kubernetes.
	KubernetesServiceIP = "10.96.0.1"
	// BridgeName is the CNI bridge (not cni0, so that it never meets a system containerd's bridge).
	BridgeName = "podid0"
	// APIServerPort is the API server's secure port on NodeIP.
	APIServerPort = 16443
	// IssuerURL is the cluster's service account issuer: the API server's own address, which serves the OIDC
	// discovery document and keys that Azure AD reads to trust the cluster's tokens (workload identity
	// federation).
	IssuerURL = "https://" + NodeIP + ":16443"
	// IMDSAddress is the node's Instance Metadata Service address, served by the fake cloud.
	IMDSAddress = "169.254.169.254"
	// PauseImage is the sandbox image, built from test/cluster/pause and imported, never pulled.
	PauseImage = "podidentity.test/pause:1"
	// RegistryHost is the node's OCI registry (package test/toolbox/registry as the process "registry": TLS with a
	// certificate of the cluster CA, htpasswd authentication). The product is pushed there and the node pulls
	// it through containerd's hosts.toml, with the pods' pull secrets.
	RegistryHost = "127.0.0.1:15000"
	// RegistryUser is the registry's user; its password is made at each start (RegistryAuth).
	RegistryUser = "podidentity-e2e"

	etcdClientPort = 12379
	etcdPeerPort   = 12380
	lockFile       = "/run/podidentity-cluster.lock"
	// ownerFile names the state directory of the cluster that holds the host's resources, so that a Start
	// from another state directory stops it first (a cluster left running with the demo's --keep).
	ownerFile = "/run/podidentity-cluster.owner"
)

// Options configure Start. Zero values take defaults.
type Options struct {
	// RepoDir is the repository's top directory (default: found from this source file).
	RepoDir string
	// BinDir holds the Kubernetes binaries, etcd and imagebuild (default RepoDir/bin).
	BinDir string
	// StateDir holds certificates, configuration, data and every component's log (default RepoDir/bin/cluster).
	StateDir string
	// NodeName is the node's name (default aks-nodepool1-12345678-vmss000000, as AKS names VMSS nodes).
	NodeName string
	// ReadyTimeout bounds the wait for each component (default 2 minutes).
	ReadyTimeout time.Duration
	// Log receives one line per step (default os.Stderr).
	Log io.Writer
}

func (o Options) withDefaults() Options {
	if o.RepoDir == "" {
		_, file, _, _ := runtime.Caller(0)
		o.RepoDir = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	}
	if o.BinDir == "" {
		o.BinDir = filepath.Join(o.RepoDir, "bin")
	}
	if o.StateDir == "" {
		o.StateDir = filepath.Join(o.RepoDir, "bin", "cluster")
	}
	if o.NodeName == "" {
		o.NodeName = "aks-nodepool1-12345678-vmss000000"
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 2 * time.Minute
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	return o
}

// Cluster is a running cluster.
type Cluster struct {
	opts Options
	lock *os.File
	cfg  *rest.Config
	// began is when bringUp started, for the progress lines.
	began time.Time
}

// Start brings the cluster up, or reuses the healthy one already running from the same state directory.
// It waits for every component and returns an error naming the one that did not come up (its log tail
// included). The caller must Stop (tear down) or Release (leave running) the cluster.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	opts = opts.withDefaults()
	if err := checkHost(opts); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, err
	}
	opts.StateDir = abs
	lock, err := acquireLock(ctx, opts.Log)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, lock: lock}
	if err := c.startLocked(ctx); err != nil {
		c.Release()
		return nil, err
	}
	return c, nil
}

// startLocked is Start under the host lock: it stops a cluster of another state directory, reuses a healthy
// one of this state directory, or brings a fresh one up.
func (c *Cluster) startLocked(ctx context.Context) error {
	opts := c.opts
	if owner, _ := os.ReadFile(ownerFile); len(owner) > 0 && string(owner) != opts.StateDir {
		c.logf("stopping the cluster left running from %s (one cluster per host)", owner)
		if err := teardown(Options{StateDir: string(owner), BinDir: opts.BinDir, Log: opts.Log}.withDefaults()); err != nil {
			return fmt.Errorf("stopping the cluster of %s: %w", owner, err)
		}
	}
	if err := c.healthy(ctx); err == nil {
		c.logf("reusing the running cluster of %s", opts.StateDir)
	} else {
		if left, _ := filepath.Glob(filepath.Join(opts.StateDir, "pids", "*.pid")); len(left) > 0 {
			c.logf("the cluster of %s is not healthy (%v): starting it again", opts.StateDir, err)
			if err := teardown(opts); err != nil {
				return err
			}
		}
		if err := os.WriteFile(ownerFile, []byte(opts.StateDir), 0o644); err != nil {
			return err
		}
		if err := c.bringUp(ctx); err != nil {
			err = fmt.Errorf("%w\n\nlogs (all in %s, kept):\n%s", err, c.logDir(), c.LogTails(15))
			// Nothing half-started may keep the host's addresses: stop what did start.
			if terr := teardown(opts); terr != nil {
				return fmt.Errorf("%w\n\nand stopping what had started: %w", err, terr)
			}
			_ = os.Remove(ownerFile)
			return err
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
	if err != nil {
		return err
	}
	c.cfg = cfg
	return nil
}

// checkHost says plainly what is missing on this machine.
func checkHost(opts Options) error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("the local cluster needs Linux (this is %s)", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root: it runs kubelet and containerd, adds addresses to lo and programs iptables (run as root, e.g. sudo -E make demo)")
	}
	var missing []string
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "imagebuild"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing in %s: %s (build them with `make cluster-bins %s`)", opts.BinDir, strings.Join(missing, ", "), filepath.Join(opts.BinDir, "imagebuild"))
	}
	for _, tool := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "iptables"} {
		if _, err := lookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		missing = append(missing, "/usr/lib/cni/bridge")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing on this machine: %s (Debian: apt-get install containerd runc containernetworking-plugins iproute2 iptables)", strings.Join(missing, ", "))
	}
	return nil
}

// acquireLock takes the host-wide lock, waiting (with a log line) while another cluster holds it. The kernel
// releases it when the process exits, so a crashed holder never blocks the next one.
func acquireLock(ctx context.Context, log io.Writer) (*os.File, error) {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the host lock %s: %w", lockFile, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		return f, nil
	}
	fmt.Fprintf(log, "cluster: waiting for another podidentity test cluster to stop (lock %s)\n", lockFile)
	waitBegan := time.Now()
	done := make(chan error, 1)
	go func() { done <- syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", lockFile, err)
		}
		fmt.Fprintf(log, "cluster: lock acquired after %.1fs\n", time.Since(waitBegan).Seconds())
		return f, nil
	case <-ctx.Done():
		f.Close() // the waiting flock keeps its own reference; closing ours does not end it, the process exit does
		return nil, fmt.Errorf("waiting for another podidentity test cluster to stop: %w", ctx.Err())
	}
}

// Stop tears the cluster down: every process it started, pod mounts, and the host changes it made; then it
// releases the host lock. Logs stay in the state directory.
func (c *Cluster) Stop() error {
	err := teardown(c.opts)
	if err == nil {
		_ = os.Remove(ownerFile)
	}
	c.Release()
	return err
}

// Release leaves the cluster running (the demo's --keep) and lets another process take the host lock; the
// next Start from the same state directory reuses the cluster, from another one stops it.
func (c *Cluster) Release() {
	if c.lock != nil {
		c.lock.Close()
		c.lock = nil
	}
}

// KubeconfigPath is the admin kubeconfig (system:masters).
func (c *Cluster) KubeconfigPath() string {
	return filepath.Join(c.opts.StateDir, "kubeconfig", "admin.kubeconfig")
}

// RESTConfig is the admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.cfg) }

// NodeName is the single node's name.
func (c *Cluster) NodeName() string { return c.opts.NodeName }

// NodeIP is the node's InternalIP.
func (c *Cluster) NodeIP() string { return NodeIP }

// StateDir holds the cluster's files; logs are in StateDir/logs.
func (c *Cluster) StateDir() string { return c.opts.StateDir }

// FakeCloudCA is the PEM file of the CA that signed the fake cloud's HTTPS certificates (ARM, Azure AD).
func (c *Cluster) FakeCloudCA() string { return filepath.Join(c.pkiDir(), "azure-ca.crt") }

// ClusterCA is the PEM file of the cluster CA: it also issued the registry's certificate, so a client of
// RegistryHost trusts it (SSL_CERT_FILE, helm --ca-file).
func (c *Cluster) ClusterCA() string { return filepath.Join(c.pkiDir(), "ca.crt") }

// RegistryDockerConfig is the directory of a Docker config.json with the registry's credentials (for
// DOCKER_CONFIG; helm reads the same file as HELM_REGISTRY_CONFIG=<dir>/config.json).
func (c *Cluster) RegistryDockerConfig() string {
	return filepath.Join(c.opts.StateDir, "registry", "auth")
}

// RegistryAuth returns the registry's user and password (from RegistryDockerConfig).
func (c *Cluster) RegistryAuth() (user, password string, err error) {
	data, err := os.ReadFile(filepath.Join(c.RegistryDockerConfig(), "config.json"))
	if err != nil {
		return "", "", fmt.Errorf("the registry's credentials: %w (is the cluster's registry process running? see logs/registry.log)", err)
	}
	var cfg struct {
		Auths map[string]struct{ Username, Password string }
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", "", fmt.Errorf("the registry's credentials: %w", err)
	}
	a, ok := cfg.Auths[RegistryHost]
	if !ok || a.Password == "" {
		return "", "", fmt.Errorf("the registry's credentials: no entry for %s", RegistryHost)
	}
	return a.Username, a.Password, nil
}

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.opts.Log, "cluster: "+format+"\n", args...)
}

func (c *Cluster) pkiDir() string  { return filepath.Join(c.opts.StateDir, "pki") }
func (c *Cluster) logDir() string  { return filepath.Join(c.opts.StateDir, "logs") }
func (c *Cluster) confDir() string { return filepath.Join(c.opts.StateDir, "config") }
func (c *Cluster) kubeconfig(name string) string {
	return filepath.Join(c.opts.StateDir, "kubeconfig", name+".kubeconfig")
}
func (c *Cluster) containerdSocket() string {
	return filepath.Join(c.opts.StateDir, "containerd", "containerd.sock")
}

// Down stops the cluster of opts.StateDir from its files (a cluster left running by Release), under the host
// lock.
func Down(ctx context.Context, opts Options) error {
	opts = opts.withDefaults()
	if err := checkHost(opts); err != nil {
		return err
	}
	abs, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return err
	}
	opts.StateDir = abs
	lock, err := acquireLock(ctx, opts.Log)
	if err != nil {
		return err
	}
	return (&Cluster{opts: opts, lock: lock}).Stop()
}
