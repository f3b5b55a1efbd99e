package sidecarload

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A memory cgroup of its own for the sidecar, as the kubelet gives each container: what the node charges a pod
// for the sidecar is this cgroup's usage, not VmRSS. VmRSS counts every page of the binary the process maps,
// while the page cache holds those pages once per node for every sidecar started from the same image layer and
// charges them to the cgroup that read them first.
type memoryCgroup struct {
	dir string
	v2  bool
}

// CgroupMemory is a memory cgroup's usage, in KiB.
type CgroupMemory struct {
	// Charged is what the cgroup is charged (cgroup v2 memory.current, v1 memory.usage_in_bytes): what counts
	// against the container's memory request and limit.
	Charged int64
	// Anon is anonymous memory (heap, stacks, runtime); File is page cache charged to this cgroup.
	Anon, File int64
}

// peak is the highest charge the cgroup has seen (v2 memory.peak, v1 memory.max_usage_in_bytes), in KiB.
func (c *memoryCgroup) peak() (int64, error) {
	name := "memory.max_usage_in_bytes"
	if c.v2 {
		name = "memory.peak"
	}
	b, err := os.ReadFile(filepath.Join(c.dir, name))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return n / 1024, nil
}

// newMemoryCgroup makes a child cgroup under parent, a directory of a cgroup v2 hierarchy with the memory
// controller enabled for its children or of cgroup v1's memory hierarchy.
func newMemoryCgroup(parent, name string) (*memoryCgroup, error) {
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("memory cgroup parent: %w (run as root, and name a directory of the memory hierarchy)", err)
	}
	// cgroup v2 gives the children of parent a memory controller only when parent enables it for them.
	if ctl := filepath.Join(parent, "cgroup.subtree_control"); fileExists(ctl) {
		if err := os.WriteFile(ctl, []byte("+memory"), 0o644); err != nil {
			return nil, fmt.Errorf("enabling the memory controller in %s: %w (is it enabled in every cgroup above it?)", ctl, err)
		}
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("memory cgroup: %w", err)
	}
	cg := &memoryCgroup{dir: dir, v2: fileExists(filepath.Join(dir, "memory.current"))}
	if !cg.v2 {
		if !fileExists(filepath.Join(dir, "memory.usage_in_bytes")) {
			_ = os.Remove(dir)
			return nil, fmt.Errorf("%s has no memory controller (neither memory.current nor memory.usage_in_bytes): name a directory of the memory hierarchy, e.g. /sys/fs/cgroup/memory/sidecarload on cgroup v1", parent)
		}
	}
	return cg, nil
}

// wrap returns the command line that joins the cgroup before it execs argv, so that every page the process
// touches from its first instruction is charged here.
func (c *memoryCgroup) wrap(argv []string) []string {
	return append([]string{"/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, c.dir}, argv...)
}

func (c *memoryCgroup) usage() (CgroupMemory, error) {
	var m CgroupMemory
	charged, anon, file := "memory.usage_in_bytes", "rss", "cache"
	if c.v2 {
		charged, anon, file = "memory.current", "anon", "file"
	}
	b, err := os.ReadFile(filepath.Join(c.dir, charged))
	if err != nil {
		return m, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return m, fmt.Errorf("%s: %w", charged, err)
	}
	m.Charged = n / 1024
	stat, err := os.ReadFile(filepath.Join(c.dir, "memory.stat"))
	if err != nil {
		return m, err
	}
	for _, line := range strings.Split(string(stat), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case anon:
			m.Anon = v / 1024
		case file:
			m.File = v / 1024
		}
	}
	return m, nil
}

// remove deletes the cgroup once its process has exited.
func (c *memoryCgroup) remove() error { return os.Remove(c.dir) }

// dropFromPageCache evicts the binary's pages from the page cache, so that the next process to run it reads
// (and is charged for) them: the first sidecar of a node.
func dropFromPageCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// Dirty pages (a binary just built) stay cached until written back: write them first.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing %s back before evicting it: %w", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("evicting %s from the page cache: %w", path, err)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// MemoryHierarchy returns a directory under which this machine's memory cgroups can be made (cgroup v2 with the
// memory controller, or cgroup v1's memory hierarchy), or "" when there is none.
func MemoryHierarchy(name string) string {
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); err == nil && strings.Contains(string(b), "memory") {
		return filepath.Join("/sys/fs/cgroup", name)
	}
	if fileExists("/sys/fs/cgroup/memory/memory.usage_in_bytes") {
		return filepath.Join("/sys/fs/cgroup/memory", name)
	}
	return ""
}
