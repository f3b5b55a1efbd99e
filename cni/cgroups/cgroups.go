// Package cgroups finds a pod's processes and its containers' cgroups in the kubelet's cgroup v2 layout, from
// the host's view of the hierarchy (the node agent runs in the host cgroup namespace, so paths and levels are
// absolute, as nftables' socket cgroupv2 match needs them). Both kubelet cgroup drivers are understood:
//
//	cgroupfs: <root>/kubepods/<qos>/pod<uid>/<container id>                   (Guaranteed: kubepods/pod<uid>)
//	systemd:  <root>/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/cri-containerd-<id>.scope
//
// (and the same below a kubelet.slice, or any other parent, as long as a component says "kubepods").
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/podidentity/podidentity/internal/redirect"
)

// RootCandidates are where Root looks, in order: the host's /sys/fs/cgroup mounted at /host/sys/fs/cgroup (how
// the chart mounts it, read-only), then the agent's own /sys/fs/cgroup; each as a cgroup v2 host has it, then
// as a hybrid v1/v2 host has it.
func RootCandidates() []string {
	return []string{"/host/sys/fs/cgroup", "/host/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"}
}

// Root is where the cgroup v2 hierarchy is mounted: the first of RootCandidates that is a cgroup2 mount.
func Root() (string, error) {
	for _, dir := range RootCandidates() {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy at any of %s: the sidecar's exemption and the repair need cgroup v2 (or the hybrid "+
		"layout); mount the host's /sys/fs/cgroup at /host/sys/fs/cgroup, use a node image with cgroup v2, or pass --cgroup-root",
		strings.Join(RootCandidates(), ", "))
}

// maxDepth bounds the walk: the deepest pod directory seen in practice is 4 below the root
// (kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/...-pod<uid>.slice).
const maxDepth = 6

// ScanPods walks the kubepods hierarchy under root and returns each pod's cgroup directory by pod UID. It
// descends into every directory of the first level, into directories whose name says "kubepods", and below
// those; it never descends into a pod's directory. So it reads a few dozen directories, not the node's
// whole hierarchy.
func ScanPods(root string) (map[string]string, error) {
	pods := map[string]string{}
	var walk func(dir string, depth int, underKubepods bool) error
	walk = func(dir string, depth int, underKubepods bool) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if depth > 0 && errors.Is(err, os.ErrNotExist) {
				return nil // removed while we walked
			}
			return err
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			name := e.Name()
			path := filepath.Join(dir, name)
			if uid, ok := ParsePodDir(name); ok && underKubepods {
				pods[uid] = path
				continue
			}
			kube := underKubepods || strings.Contains(name, "kubepods")
			if depth+1 < maxDepth && (depth == 0 || kube) {
				if err := walk(path, depth+1, kube); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(root, 0, false); err != nil {
		return nil, fmt.Errorf("scanning the pods' cgroups under %s: %w", root, err)
	}
	return pods, nil
}

// ParsePodDir returns the pod UID a directory name stands for: "pod<uid>" (cgroupfs driver) or
// "...-pod<uid with _ for ->.slice" (systemd driver).
func ParsePodDir(name string) (uid string, ok bool) {
	if rest, ok := strings.CutSuffix(name, ".slice"); ok {
		i := strings.LastIndex(rest, "-pod")
		if i < 0 {
			return "", false
		}
		uid = strings.ReplaceAll(rest[i+len("-pod"):], "_", "-")
	} else if rest, ok := strings.CutPrefix(name, "pod"); ok {
		uid = rest
	} else {
		return "", false
	}
	if !isUID(uid) {
		return "", false
	}
	return uid, true
}

// isUID accepts the canonical 8-4-4-4-12 hexadecimal form the API server gives pods, and the 32 hexadecimal
// digits the kubelet gives a static pod (a hash of its manifest; the mirror pod's annotation
// kubernetes.io/config.mirror carries it).
func isUID(s string) bool {
	if len(s) == 32 {
		for _, c := range s {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
		return true
	}
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// IsContainerDir reports whether a directory name is the cgroup of the container with this runtime id: the id
// itself (cgroupfs driver) or <runtime>-<id>.scope (systemd driver: cri-containerd-, crio-, docker-). CRI-O's
// "crio-conmon-<id>.scope" is the monitor process, not the container, and does not match.
func IsContainerDir(name, id string) bool {
	if id == "" {
		return false
	}
	if name == id {
		return true
	}
	for _, p := range []string{"cri-containerd-", "crio-", "docker-"} {
		if name == p+id+".scope" {
			return true
		}
	}
	return false
}

// ContainerDir returns the cgroup directory of the container with this runtime id under the pod's directory.
func ContainerDir(podDir, id string) (string, error) {
	entries, err := os.ReadDir(podDir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.IsDir() && IsContainerDir(e.Name(), id) {
			return filepath.Join(podDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("no cgroup of container %s under %s", id, podDir)
}

// SandboxDirs returns the pod's child cgroups that belong to none of the containers the pod's status names:
// the sandbox's ("pause"), whose process holds the pod's network namespace and that no container of the pod
// can enter.
func SandboxDirs(podDir string, containerIDs []string) ([]string, error) {
	entries, err := os.ReadDir(podDir)
	if err != nil {
		return nil, err
	}
	var out []string
next:
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		for _, id := range containerIDs {
			if IsContainerDir(e.Name(), id) {
				continue next
			}
		}
		out = append(out, filepath.Join(podDir, e.Name()))
	}
	return out, nil
}

// Of returns a cgroup directory as the socket cgroupv2 match sees it: its inode number is the id, its depth
// below the hierarchy's root the level.
func Of(root, dir string) (redirect.Cgroup, error) {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return redirect.Cgroup{}, fmt.Errorf("%s is not below the cgroup root %s", dir, root)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return redirect.Cgroup{}, err
	}
	return redirect.Cgroup{ID: st.Ino, Level: uint32(strings.Count(rel, "/") + 1)}, nil
}

// Procs returns the pids of the processes in a cgroup (its cgroup.procs).
func Procs(dir string) ([]int, error) {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, sc.Err()
}

// PodProcs returns the pids of the pod's sandbox cgroups first, then those of every other child cgroup (a
// fallback for a runtime that puts the sandbox elsewhere). Each list is in cgroup.procs order.
func PodProcs(podDir string, containerIDs []string) (sandbox, others []int, err error) {
	sandboxDirs, err := SandboxDirs(podDir, containerIDs)
	if err != nil {
		return nil, nil, err
	}
	isSandbox := map[string]bool{}
	for _, d := range sandboxDirs {
		isSandbox[d] = true
		pids, _ := Procs(d) // a cgroup removed meanwhile has no processes
		sandbox = append(sandbox, pids...)
	}
	entries, err := os.ReadDir(podDir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		if d := filepath.Join(podDir, e.Name()); e.IsDir() && !isSandbox[d] {
			pids, _ := Procs(d)
			others = append(others, pids...)
		}
	}
	return sandbox, others, nil
}
