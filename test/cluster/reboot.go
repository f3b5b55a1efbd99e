package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// RebootNode simulates a reboot of the node while the control plane stays up, as a node of a real cluster
// reboots: the kubelet and containerd stop, every container dies, what lived in memory (network namespaces,
// mounts, pod cgroups) is gone, the primary CNI writes its configuration afresh when it starts (dropping
// whatever was chained into it), then containerd and the kubelet start again and the kubelet recreates every
// pod's sandbox. What lives on disk stays: images, the CNI binaries, the kubelet's state.
func (c *Cluster) RebootNode(ctx context.Context) error {
	st := c.opts.StateDir
	began := time.Now()
	c.logf("rebooting node %s", c.opts.NodeName)
	if err := stopProcess(st, "kubelet", 10*time.Second); err != nil {
		return err
	}
	killPods()
	killShims(c.containerdSocket())
	if err := stopProcess(st, "containerd", 15*time.Second); err != nil {
		return err
	}
	// Memory that a reboot clears: pod mounts and network namespaces, and the pod cgroups.
	if err := unmountUnder(filepath.Join(st, "kubelet")); err != nil {
		return err
	}
	if err := unmountUnder(filepath.Join(st, "containerd")); err != nil {
		return err
	}
	if err := removePodNetns(); err != nil {
		return err
	}
	removeKubepodsCgroups()
	if err := c.RewritePrimaryCNIConfig(); err != nil {
		return err
	}
	containerd, _ := lookPath("containerd")
	c.began = time.Now()
	if err := c.startComponent("containerd", containerd, "--config="+filepath.Join(c.confDir(), "containerd.toml")); err != nil {
		return err
	}
	if err := c.waitContainerd(ctx); err != nil {
		return err
	}
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	if err := c.startKubelet(ctx, cs); err != nil {
		return err
	}
	c.logf("node %s Ready again, %.1fs after the reboot began", c.opts.NodeName, time.Since(began).Seconds())
	return nil
}

// removePodNetns removes the network namespaces containerd's CNI made for pods (/run/netns/cni-*): this host
// runs no other kubelet. The namespace files are bind mounts; unmounting them ends the namespaces.
func removePodNetns() error {
	entries, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var failed []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "cni-") {
			continue
		}
		p := filepath.Join("/run/netns", e.Name())
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
			failed = append(failed, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		if err := os.Remove(p); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", p, err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("removing pod network namespaces: %s", strings.Join(failed, "; "))
	}
	return nil
}
