package cluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The processes of a cluster, in start order; teardown stops them in reverse. Each runs in its own session
// (so it outlives the starter for --keep and a terminal's Ctrl-C does not reach it), logs to logs/<name>.log
// and is recorded in pids/<name>.pid as "<pid> <binary>".
func componentOrder() []string {
	return []string{"etcd", "fakecloud", "registry", "containerd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet"}
}

func lookPath(tool string) (string, error) {
	if p, err := exec.LookPath(tool); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, tool)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", tool)
}

// startProcess starts binary with args as component name.
func startProcess(stateDir, name, binary string, args []string, env []string) error {
	for _, d := range []string{"logs", "pids"} {
		if err := os.MkdirAll(filepath.Join(stateDir, d), 0o755); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(filepath.Join(stateDir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s %s %s\n", time.Now().UTC().Format(time.RFC3339), binary, strings.Join(args, " "))
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	// The child is reaped by this process while it lives; after it exits, by init.
	go func() { _ = cmd.Wait() }()
	return os.WriteFile(pidFile(stateDir, name), []byte(fmt.Sprintf("%d %s\n", pid, binary)), 0o644)
}

func pidFile(stateDir, name string) string { return filepath.Join(stateDir, "pids", name+".pid") }

// recordedProcess reads a pid file; ok is false when there is none.
func recordedProcess(stateDir, name string) (pid int, binary string, ok bool) {
	b, err := os.ReadFile(pidFile(stateDir, name))
	if err != nil {
		return 0, "", false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, "", false
	}
	pid, err = strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0, "", false
	}
	return pid, f[1], true
}

// running reports whether pid is alive and still runs binary (a recycled pid runs something else).
func running(pid int, binary string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	if strings.TrimSuffix(exe, " (deleted)") != binary {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has exited; only its parent's wait is missing.
	if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
		return false
	}
	return true
}

// componentAlive reports whether the recorded process of name runs.
func componentAlive(stateDir, name string) error {
	pid, bin, ok := recordedProcess(stateDir, name)
	if !ok {
		return fmt.Errorf("%s was never started here", name)
	}
	if !running(pid, bin) {
		return fmt.Errorf("%s (pid %d) is not running", name, pid)
	}
	return nil
}

// stopProcess ends the recorded process group of name: SIGTERM, then SIGKILL after grace.
func stopProcess(stateDir, name string, grace time.Duration) error {
	pid, bin, ok := recordedProcess(stateDir, name)
	if !ok {
		return nil
	}
	defer os.Remove(pidFile(stateDir, name))
	if !running(pid, bin) {
		return nil
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !running(pid, bin) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	for i := 0; i < 100 && running(pid, bin); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if running(pid, bin) {
		return fmt.Errorf("%s (pid %d) survived SIGKILL", name, pid)
	}
	return nil
}

// LogTails returns the last lines of every component's log, for failure reports.
func (c *Cluster) LogTails(lines int) string {
	return logTails(c.logDir(), lines)
}

func logTails(dir string, lines int) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", filepath.Base(f), len(all), strings.Join(all, "\n"))
	}
	return b.String()
}
