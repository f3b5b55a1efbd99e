package cluster

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// waitContainerd waits until containerd serves both its own API and the CRI. It answers `ctr version` a
// moment before its CRI plugin has initialized ("server is not initialized yet"), and a kubelet started in
// that moment fails its CRI check and exits.
func (c *Cluster) waitContainerd(ctx context.Context) error {
	return c.waitFor(ctx, "containerd", func(ctx context.Context) error {
		if _, err := c.ctr(ctx, "version"); err != nil {
			return err
		}
		return criRuntimeReady(ctx, c.containerdSocket())
	})
}

// criRuntimeReady asks the CRI runtime service on socket for its status, as the kubelet does, and wants the
// RuntimeReady condition (NetworkReady waits for a CNI configuration, which is not the runtime's to give).
func criRuntimeReady(ctx context.Context, socket string) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	st, err := runtimeapi.NewRuntimeServiceClient(conn).Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return fmt.Errorf("CRI status: %w", err)
	}
	for _, cond := range st.GetStatus().GetConditions() {
		if cond.GetType() == runtimeapi.RuntimeReady {
			if cond.GetStatus() {
				return nil
			}
			return fmt.Errorf("CRI runtime not ready: %s %s", cond.GetReason(), cond.GetMessage())
		}
	}
	return fmt.Errorf("CRI status has no %s condition", runtimeapi.RuntimeReady)
}

// startKubelet starts the node's kubelet and waits until it is the one keeping the node Ready: a Node
// object still reads Ready for a while after its kubelet stopped, so the check also wants the node's lease
// renewed since this start.
func (c *Cluster) startKubelet(ctx context.Context, cs kubernetes.Interface) error {
	st := c.opts.StateDir
	started := time.Now()
	if err := c.startComponent("kubelet", filepath.Join(c.opts.BinDir, "kubelet"), "--config="+filepath.Join(c.confDir(), "kubelet.yaml"),
		"--kubeconfig="+c.kubeconfig("kubelet"), "--hostname-override="+c.opts.NodeName, "--node-ip="+NodeIP,
		"--root-dir="+filepath.Join(st, "kubelet"), "--cert-dir="+filepath.Join(st, "kubelet", "pki"), "--v=1"); err != nil {
		return err
	}
	return c.waitFor(ctx, "kubelet", func(ctx context.Context) error {
		if err := nodeReady(ctx, cs, c.opts.NodeName); err != nil {
			return err
		}
		return leaseRenewedSince(ctx, cs, c.opts.NodeName, started)
	})
}

// leaseRenewedSince wants the node's lease (kube-node-lease/<node>) renewed at or after since: proof that a
// kubelet started then is alive and talking to the API server.
func leaseRenewedSince(ctx context.Context, cs kubernetes.Interface, node string, since time.Time) error {
	l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("node lease: %w", err)
	}
	if renewed := renewTime(l); renewed.Before(since.Truncate(time.Microsecond)) {
		return fmt.Errorf("node lease last renewed %s, before the kubelet started (%s)", renewed.Format(time.RFC3339Nano), since.Format(time.RFC3339Nano))
	}
	return nil
}

func renewTime(l *coordinationv1.Lease) time.Time {
	if l.Spec.RenewTime == nil {
		return time.Time{}
	}
	return l.Spec.RenewTime.Time
}
