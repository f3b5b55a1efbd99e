// Package nstest gives tests real, throwaway network namespaces: a named namespace per test run, a "pod" and a
// "node" joined by a veth pair, code and processes run inside them, and guaranteed removal. Everything needs
// root; Require skips otherwise.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Require skips the test unless it runs as root with the tools the namespace tests use.
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping in -short mode: this test creates network namespaces and nftables rules")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: network-namespace tests need root (they create namespaces, veths and nftables rules); " +
			"run `sudo go test ./init/...`")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install iproute2 and nftables (apt-get install -y iproute2 nftables)", tool)
		}
	}
}

// NS is a named network namespace that lives until the test ends.
type NS struct {
	Name   string
	handle netns.NsHandle
}

// UniqueSuffix returns a short random token for names that must not collide with parallel runs.
func UniqueSuffix(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// New creates a network namespace named pi-<suffix>-<role> with lo up, removed when the test ends (also when
// it fails).
func New(t testing.TB, suffix, role string) *NS {
	t.Helper()
	name := fmt.Sprintf("pi-%s-%s", suffix, role)
	Cmd(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("removing network namespace %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("opening network namespace %s: %v", name, err)
	}
	t.Cleanup(func() { _ = h.Close() })
	ns := &NS{Name: name, handle: h}
	ns.Cmd(t, "ip", "link", "set", "lo", "up")
	return ns
}

// FD is the namespace's file descriptor, for APIs that take one (nftables.WithNetNSFd).
func (ns *NS) FD() int { return int(ns.handle) }

// Cmd runs a command inside the namespace (ip netns exec) and returns its output; failure ends the test.
func (ns *NS) Cmd(t testing.TB, argv ...string) string {
	t.Helper()
	return Cmd(t, append([]string{"ip", "netns", "exec", ns.Name}, argv...)...)
}

// Cmd runs a command and returns its standard output; failure ends the test.
func Cmd(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		stderr := ""
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, stderr)
	}
	return string(out)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn creates belong to the namespace for
// their whole life; processes it starts are born in it. The thread is never reused: it stays locked and ends
// with the goroutine, so the namespace cannot leak into other goroutines.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns.handle); err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Start starts cmd inside the namespace (cmd may carry SysProcAttr.Credential to run as another uid).
func (ns *NS) Start(cmd *exec.Cmd) error { return ns.Do(cmd.Start) }

// Link is a pod namespace with a default route through a veth to a node namespace.
type Link struct {
	Pod, Node *NS
	// PodAddr and NodeAddr are the two ends' addresses on a /30.
	PodAddr, NodeAddr string
}

// NewLink creates a pod and a node namespace joined by a veth pair: the pod's default route goes to the node,
// and the node also holds each of nodeAddrs (e.g. 169.254.169.254), so the pod reaches them through the veth.
func NewLink(t testing.TB, nodeAddrs ...string) *Link {
	t.Helper()
	suffix := UniqueSuffix(t)
	l := &Link{Pod: New(t, suffix, "pod"), Node: New(t, suffix, "node"), PodAddr: "10.200.0.2", NodeAddr: "10.200.0.1"}
	podIf, nodeIf := "pi"+suffix+"p", "pi"+suffix+"n"
	Cmd(t, "ip", "link", "add", podIf, "netns", l.Pod.Name, "type", "veth", "peer", "name", nodeIf, "netns", l.Node.Name)
	l.Node.Cmd(t, "ip", "addr", "add", l.NodeAddr+"/30", "dev", nodeIf)
	for _, a := range nodeAddrs {
		l.Node.Cmd(t, "ip", "addr", "add", a+"/32", "dev", nodeIf)
	}
	l.Node.Cmd(t, "ip", "link", "set", nodeIf, "up")
	l.Pod.Cmd(t, "ip", "addr", "add", l.PodAddr+"/30", "dev", podIf)
	l.Pod.Cmd(t, "ip", "link", "set", podIf, "up")
	l.Pod.Cmd(t, "ip", "route", "add", "default", "via", l.NodeAddr)
	return l
}

// Cgroup is a cgroup v2 the test made, for processes whose sockets the rules must tell apart by cgroup.
type Cgroup struct {
	// Path is the directory on the cgroup2 filesystem.
	Path string
	// ID and Level are what nftables' socket cgroupv2 match compares: the directory's inode number, and its
	// depth below the cgroup2 root.
	ID    uint64
	Level uint32
	fd    int
}

// Cgroup2Root is where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a cgroup v2 host,
// /sys/fs/cgroup/unified on a hybrid v1/v2 one; ok is false when there is none.
func Cgroup2Root() (string, bool) {
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, true
		}
	}
	return "", false
}

// NewCgroup creates the cgroup v2 pi-<suffix>/<name> (parents as needed), removed when the test ends, after
// the processes in it have exited.
func NewCgroup(t testing.TB, suffix, name string) *Cgroup {
	t.Helper()
	root, ok := Cgroup2Root()
	if !ok {
		t.Skip("skipping: no cgroup v2 hierarchy on this host (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified is cgroup2)")
	}
	parent := filepath.Join(root, "pi-"+suffix)
	path := filepath.Join(parent, name)
	for _, dir := range []string{parent, path} {
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			t.Fatalf("creating cgroup %s: %v", dir, err)
		}
	}
	t.Cleanup(func() {
		_ = os.Remove(path)
		_ = os.Remove(parent) // fails while a sibling still exists; the last one removes it
	})
	return openCgroup(t, root, path)
}

// CgroupTree is a cgroup v2 hierarchy a test lays out as it likes (the kubelet's cgroupfs or systemd layout)
// under <cgroup2 root>/pi-<suffix>/, removed with everything in it when the test ends.
type CgroupTree struct {
	// Root is the cgroup2 mount; Base is the tree's top directory below it.
	Root, Base string
	t          testing.TB
}

// NewCgroupTree makes <cgroup2 root>/pi-<suffix>; it skips the test on a host without cgroup v2.
func NewCgroupTree(t testing.TB) *CgroupTree {
	t.Helper()
	root, ok := Cgroup2Root()
	if !ok {
		t.Skip("skipping: no cgroup v2 hierarchy on this host (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified is cgroup2)")
	}
	base := filepath.Join(root, "pi-"+UniqueSuffix(t))
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTree(t, base) })
	return &CgroupTree{Root: root, Base: base, t: t}
}

// Mkdir creates rel (slash-separated, parents as needed) below Base and returns it, open for Into.
func (tr *CgroupTree) Mkdir(rel string) *Cgroup {
	tr.t.Helper()
	path := filepath.Join(tr.Base, rel)
	if err := os.MkdirAll(path, 0o755); err != nil {
		tr.t.Fatalf("creating cgroup %s: %v", path, err)
	}
	return openCgroup(tr.t, tr.Root, path)
}

// openCgroup describes the cgroup directory path below root and keeps it open for Into until the test ends.
func openCgroup(t testing.TB, root, path string) *Cgroup {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	rel, _ := filepath.Rel(root, path)
	return &Cgroup{Path: path, ID: st.Ino, Level: uint32(strings.Count(rel, "/") + 1), fd: fd}
}

// removeCgroupTree removes cgroup directories bottom-up (rmdir only: a cgroup's files are not removable),
// after killing what still runs in them.
func removeCgroupTree(t testing.TB, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeCgroupTree(t, filepath.Join(dir, e.Name()))
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
		for _, f := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for i := 0; i < 50; i++ {
		if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("removing cgroup %s: still busy", dir)
}

// Into makes a command start inside the cgroup (clone3 with CLONE_INTO_CGROUP), keeping its other process
// attributes.
func (c *Cgroup) Into(cmd *exec.Cmd) *exec.Cmd {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = c.fd
	return cmd
}

// Serve listens on addr inside ns and answers every connection with banner, until the test ends.
func Serve(t testing.TB, ns *NS, addr, banner string) {
	t.Helper()
	var l net.Listener
	if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, banner)
			_ = c.Close()
		}
	}()
}

// DialBanner connects to addr from the caller's namespace and returns "ok <what the server sent>" or
// "error <why>": the one line a test's helper process prints, and what Serve's listeners are checked with.
func DialBanner(addr string, timeout time.Duration) string {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "error " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return "error reading: " + err.Error()
	}
	return "ok " + string(b)
}

// Dial is DialBanner from inside ns.
func (ns *NS) Dial(addr string, timeout time.Duration) string {
	var out string
	if err := ns.Do(func() error { out = DialBanner(addr, timeout); return nil }); err != nil {
		return "error " + err.Error()
	}
	return out
}
