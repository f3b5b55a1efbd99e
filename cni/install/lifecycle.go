package install

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Uninstalling decides, when the agent is told to stop, whether it is being uninstalled (its DaemonSet is gone
// or being deleted: remove the plugin from the node) or only stopped (a rollout, a node drain or shutdown, an
// eviction: leave the plugin chained, so that pods created until the next agent starts are still fenced, or
// fail to start, rather than run unprotected). ds and err are the result of reading the agent's own DaemonSet
// live. why says which case it is, for the log.
//
// A rejected token or a refused read counts as uninstalled: helm deletes the agent's ServiceAccount and RBAC
// in the same call as its DaemonSet, and a plugin left with credentials that no longer work would refuse every
// new pod of the node for good. Any other failure (the API server unreachable) leaves the plugin in place:
// failing closed.
func Uninstalling(ds *appsv1.DaemonSet, err error) (bool, string) {
	switch {
	case apierrors.IsNotFound(err):
		return true, "the DaemonSet no longer exists"
	case apierrors.IsUnauthorized(err):
		return true, fmt.Sprintf("the agent's service account token is rejected (its ServiceAccount was deleted with the release): %v", err)
	case apierrors.IsForbidden(err):
		return true, fmt.Sprintf("the agent may no longer read its DaemonSet (its RBAC was deleted with the release): %v", err)
	case err != nil:
		return false, fmt.Sprintf("cannot tell whether the DaemonSet still exists (%v): leaving the plugin in place (fail closed)", err)
	case ds == nil:
		return false, "no DaemonSet read: leaving the plugin in place"
	case ds.DeletionTimestamp != nil:
		return true, "the DaemonSet is being deleted"
	}
	return false, "the DaemonSet exists: a rollout, a drain or a restart; leaving the plugin in place so that new pods stay fenced"
}
