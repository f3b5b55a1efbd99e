package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// baselineFile records the host's state before the first cluster changed it, so that teardown restores it
// even after a crash. It lives in /run (gone at reboot, like the changes themselves).
const baselineFile = "/run/podidentity-cluster.baseline"

// Sysctls the cluster changes: ip_forward (pods reach the node through the bridge), and those kubelet sets
// at start (protectKernelDefaults is off) or kube-proxy may set.
func changedSysctls() []string {
	return []string{"net/ipv4/ip_forward", "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
		"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/conf/all/route_localnet",
		"net/bridge/bridge-nf-call-iptables"}
}

// loAddresses are added to lo: the node's address and the IMDS address.
func loAddresses() []string { return []string{NodeIP + "/32", IMDSAddress + "/32"} }

type baseline struct {
	Sysctls map[string]string `json:"sysctls"`
	// Chains are the iptables/ip6tables chains (per binary and table) that existed before.
	Chains map[string][]string `json:"chains"`
	// NftTables are the nftables tables ("<family> <name>") that existed before: iptables-nft creates its
	// tables on first use and leaves them, empty, behind.
	NftTables []string `json:"nftTables"`
	// LoAddresses are those of loAddresses that lo already had: they are left in place.
	LoAddresses []string `json:"loAddresses"`
}

// setUpHost records the baseline (once), turns ip_forward on and adds the lo addresses.
func setUpHost(log io.Writer) error {
	if _, err := os.Stat(baselineFile); os.IsNotExist(err) {
		b := baseline{Sysctls: map[string]string{}, Chains: map[string][]string{}}
		for _, s := range changedSysctls() {
			if v, err := os.ReadFile(filepath.Join("/proc/sys", s)); err == nil {
				b.Sysctls[s] = strings.TrimSpace(string(v))
			}
		}
		b.NftTables = nftTables()
		for _, a := range loAddresses() {
			if hasLoAddress(a) {
				b.LoAddresses = append(b.LoAddresses, a)
			}
		}
		for _, key := range chainKeys() {
			b.Chains[key] = listChains(key)
		}
		data, _ := json.Marshal(b)
		if err := os.WriteFile(baselineFile, data, 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("turning on ip_forward: %w", err)
	}
	for _, a := range loAddresses() {
		if hasLoAddress(a) {
			continue
		}
		if out, err := run("ip", "addr", "add", a, "dev", "lo"); err != nil {
			return fmt.Errorf("adding %s to lo: %w: %s", a, err, out)
		}
		fmt.Fprintf(log, "cluster: added %s to lo\n", a)
	}
	return nil
}

func hasLoAddress(cidr string) bool {
	out, _ := run("ip", "-o", "addr", "show", "dev", "lo")
	return strings.Contains(out, " "+cidr+" ")
}

// teardown stops the cluster of opts.StateDir from its files alone (pid files, baseline), so that it also
// cleans up after a crashed or killed starter: pods first (so the CNI removes their network), then the
// processes, mounts, and every host change.
func teardown(opts Options) error {
	st := opts.StateDir
	began := time.Now()
	logf := func(format string, args ...any) { fmt.Fprintf(opts.Log, "cluster: "+format+"\n", args...) }
	var errs []string
	if componentAlive(st, "kubelet") == nil && componentAlive(st, "kube-apiserver") == nil {
		// Controllers first, so that nothing recreates the pods being removed.
		for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
			_ = stopProcess(st, name, 10*time.Second)
		}
		if err := removePods(filepath.Join(st, "kubeconfig", "admin.kubeconfig")); err != nil {
			logf("removing pods through the kubelet: %v (killing them instead)", err)
		}
	}
	_ = stopProcess(st, "kubelet", 10*time.Second)
	killPods()
	killShims(filepath.Join(st, "containerd", "containerd.sock"))
	order := componentOrder()
	for i := len(order) - 1; i >= 0; i-- {
		if err := stopProcess(st, order[i], 15*time.Second); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if err := unmountUnder(st); err != nil {
		errs = append(errs, err.Error())
	}
	removeKubepodsCgroups()
	removeLogSymlinks(filepath.Join(st, "pod-logs"))
	errs = append(errs, restoreHost(opts.BinDir, logf)...)
	if len(errs) > 0 {
		return fmt.Errorf("stopping the cluster: %s", strings.Join(errs, "; "))
	}
	logf("stopped in %.1fs (logs kept in %s)", time.Since(began).Seconds(), filepath.Join(st, "logs"))
	return nil
}

// removePods force-deletes every pod and waits until the kubelet has torn their sandboxes down (no veth
// left on the bridge).
func removePods(kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	zero := int64(0)
	for _, p := range pods.Items {
		_ = cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	}
	for {
		ports, _ := os.ReadDir(filepath.Join("/sys/class/net", BridgeName, "brif"))
		if len(ports) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d pod interfaces still on %s", len(ports), BridgeName)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// killPods kills every process in the kubelet's pod cgroups (/kubepods: this host runs no other kubelet).
func killPods() {
	for _, pid := range cgroupProcs("/sys/fs/cgroup/pids/kubepods") {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func cgroupProcs(root string) []int {
	var pids []int
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		data, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeKubepodsCgroups removes the pod cgroups the kubelet created, deepest first.
func removeKubepodsCgroups() {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			_ = syscall.Rmdir(d)
		}
	}
}

// killShims kills the containerd shims of this cluster's containerd (found by its socket on their command
// line); they are daemons, outside the containerd process group.
func killShims(socket string) {
	for _, pid := range shimsOf(socket) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func shimsOf(socket string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 0 && strings.Contains(filepath.Base(args[0]), "containerd-shim") && bytes.Contains(cmdline, []byte(socket)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountUnder detaches every mount below dir (pod volumes, sandbox shm, overlay rootfs), deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mounts = append(mounts, unescapeMount(fields[4]))
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	var failed []string
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
			failed = append(failed, m+": "+err.Error())
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("unmounting: %s", strings.Join(failed, ", "))
	}
	return nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeLogSymlinks removes the kubelet's /var/log/containers links into this cluster's pod logs.
func removeLogSymlinks(podLogs string) {
	links, _ := filepath.Glob("/var/log/containers/*.log")
	for _, l := range links {
		if t, err := os.Readlink(l); err == nil && strings.HasPrefix(t, podLogs+"/") {
			_ = os.Remove(l)
		}
	}
}

// restoreHost removes kube-proxy's and the kubelet's iptables chains, the bridge and the lo addresses, and
// restores the recorded sysctls.
func restoreHost(binDir string, logf func(string, ...any)) []string {
	var errs []string
	var b baseline
	data, err := os.ReadFile(baselineFile)
	if err != nil {
		return nil // nothing was changed on this host (or it was restored already)
	}
	if err := json.Unmarshal(data, &b); err != nil {
		return []string{fmt.Sprintf("%s is corrupt (%v): restore the host by hand", baselineFile, err)}
	}
	if kp := filepath.Join(binDir, "kube-proxy"); fileExists(kp) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = exec.CommandContext(ctx, kp, "--cleanup").Run()
		cancel()
	}
	for _, key := range chainKeys() {
		removeNewChains(key, b.Chains[key])
	}
	removeNewEmptyTables(b.NftTables)
	if _, err := os.Stat(filepath.Join("/sys/class/net", BridgeName)); err == nil {
		if out, err := run("ip", "link", "del", BridgeName); err != nil {
			errs = append(errs, fmt.Sprintf("removing bridge %s: %v: %s", BridgeName, err, out))
		}
	}
	for _, a := range loAddresses() {
		if hasLoAddress(a) && !slices.Contains(b.LoAddresses, a) {
			if out, err := run("ip", "addr", "del", a, "dev", "lo"); err != nil {
				errs = append(errs, fmt.Sprintf("removing %s from lo: %v: %s", a, err, out))
			}
		}
	}
	for s, v := range b.Sysctls {
		cur, _ := os.ReadFile(filepath.Join("/proc/sys", s))
		if strings.TrimSpace(string(cur)) != v {
			if err := os.WriteFile(filepath.Join("/proc/sys", s), []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Sprintf("restoring %s=%s: %v", s, v, err))
			}
		}
	}
	if len(errs) == 0 {
		_ = os.Remove(baselineFile)
		logf("host restored: lo addresses, bridge %s, iptables chains and sysctls", BridgeName)
	}
	return errs
}

// chainKeys are "<binary> <table>" pairs whose chains the cluster may add to.
func chainKeys() []string {
	var keys []string
	for _, bin := range []string{"iptables", "ip6tables"} {
		if _, err := lookPath(bin); err != nil {
			continue
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			keys = append(keys, bin+" "+table)
		}
	}
	return keys
}

func listChains(key string) []string {
	bin, table, _ := strings.Cut(key, " ")
	out, err := run(bin, "-w", "-t", table, "-S")
	if err != nil {
		return nil
	}
	var chains []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "-N" {
			chains = append(chains, f[1])
		}
	}
	return chains
}

// removeNewChains deletes the KUBE-* and CNI-* chains that were not in the baseline, with the rules of
// other chains that jump to them.
func removeNewChains(key string, before []string) {
	bin, table, _ := strings.Cut(key, " ")
	existed := map[string]bool{}
	for _, c := range before {
		existed[c] = true
	}
	ours := map[string]bool{}
	for _, c := range listChains(key) {
		if !existed[c] && (strings.HasPrefix(c, "KUBE-") || strings.HasPrefix(c, "CNI-")) {
			ours[c] = true
		}
	}
	if len(ours) == 0 {
		return
	}
	out, _ := run(bin, "-w", "-t", table, "-S")
	for _, line := range strings.Split(out, "\n") {
		args := splitRule(line)
		if len(args) < 4 || args[0] != "-A" || ours[args[1]] {
			continue
		}
		for i := 2; i+1 < len(args); i++ {
			if (args[i] == "-j" || args[i] == "-g") && ours[args[i+1]] {
				_, _ = run(bin, append([]string{"-w", "-t", table, "-D"}, args[1:]...)...)
				break
			}
		}
	}
	for c := range ours {
		_, _ = run(bin, "-w", "-t", table, "-F", c)
	}
	for c := range ours {
		_, _ = run(bin, "-w", "-t", table, "-X", c)
	}
}

// splitRule splits an iptables -S line into arguments, honouring double quotes (comments).
func splitRule(line string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			inQuote, have = !inQuote, true
		case ch == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

func run(tool string, args ...string) (string, error) {
	p, err := lookPath(tool)
	if err != nil {
		return "", err
	}
	out, err := exec.Command(p, args...).CombinedOutput()
	return string(out), err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func nftTables() []string {
	out, err := run("nft", "list", "tables")
	if err != nil {
		return nil
	}
	var tables []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "table" {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables
}

// removeNewEmptyTables deletes the nftables tables that were not in the baseline and hold no rule (those
// iptables-nft created for kube-proxy's and the kubelet's chains).
func removeNewEmptyTables(before []string) {
	existed := map[string]bool{}
	for _, t := range before {
		existed[t] = true
	}
	for _, t := range nftTables() {
		if existed[t] {
			continue
		}
		family, name, _ := strings.Cut(t, " ")
		out, err := run("nft", "-j", "list", "table", family, name)
		if err != nil || strings.Contains(out, `"rule":`) {
			continue
		}
		_, _ = run("nft", "delete", "table", family, name)
	}
}
