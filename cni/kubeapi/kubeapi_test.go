package kubeapi_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/podidentity/podidentity/cni/kubeapi"
)

func TestExplain(t *testing.T) {
	pods := schema.GroupResource{Resource: "pods"}
	exceptions := schema.GroupResource{Group: "aadpodidentity.k8s.io", Resource: "azurepodidentityexceptions"}
	refused := &url.Error{Op: "Get", URL: "https://10.0.0.1/api", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	for _, tc := range []struct {
		name           string
		err            error
		verb, resource string
		cause          kubeapi.Cause
		transient      bool
		mention        []string
	}{
		{"unreachable", refused, "get", "pods", kubeapi.CauseUnreachable, true,
			[]string{"is unreachable from the node", "is the podidentity-node DaemonSet running on this node?", "the kubeconfig /k"}},
		{"timeout", fmt.Errorf("waiting: %w", context.DeadlineExceeded), "get", "pods", kubeapi.CauseUnreachable, true, []string{"unreachable"}},
		{"token expired", apierrors.NewUnauthorized("Unauthorized"), "get", "pods", kubeapi.CauseUnauthorized, false,
			[]string{"rejected the credentials of the kubeconfig /k", "is the podidentity-node DaemonSet running on this node?"}},
		{"RBAC", apierrors.NewForbidden(pods, "web", errors.New("no")), "get", "pods", kubeapi.CauseForbidden, false,
			[]string{"RBAC", "may not get pods", "ClusterRole needs"}},
		{"pod gone", apierrors.NewNotFound(pods, "web"), "get", "pods", kubeapi.CauseNotFound, false, []string{"deleted before its sandbox"}},
		{"CRD missing", apierrors.NewNotFound(exceptions, ""), "list", "azurepodidentityexceptions.aadpodidentity.k8s.io", kubeapi.CauseCRDMissing, false,
			[]string{"install the project's CRDs"}},
		{"throttled", apierrors.NewTooManyRequests("slow down", 1), "get", "pods", kubeapi.CauseAPIError, true, []string{"failed to get pods"}},
		{"etcd down", apierrors.NewInternalError(errors.New("etcd")), "get", "namespaces", kubeapi.CauseAPIError, true, []string{"failed to get namespaces"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := kubeapi.Explain(tc.err, tc.verb, tc.resource, "apps/web", "https://10.0.0.1", "the kubeconfig /k")
			if e.Cause != tc.cause || e.Transient() != tc.transient {
				t.Errorf("Explain = %s (transient %v), want %s (%v)", e.Cause, e.Transient(), tc.cause, tc.transient)
			}
			for _, m := range tc.mention {
				if !strings.Contains(e.Error(), m) {
					t.Errorf("message does not say %q: %s", m, e)
				}
			}
			if !errors.Is(e, tc.err) {
				t.Error("the original error is not wrapped")
			}
		})
	}
}
