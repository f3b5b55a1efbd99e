package desired

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Pool is the identity node pool of guard mode: the nodes that carry the label Key=Value. Only their VMs and
// scale sets receive user-assigned identities, because only there does the admission policy keep
// un-injected pods (which could ask the node's IMDS for any attached identity) away.
type Pool struct {
	Key, Value string
}

// ParsePool reads "key=value"; an empty string means guard mode is off (nil).
func ParsePool(s string) (*Pool, error) {
	if s == "" {
		return nil, nil
	}
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return nil, fmt.Errorf("%q is not a node label key=value (for example podidentity.io/pool=identities)", s)
	}
	if errs := validation.IsQualifiedName(k); len(errs) > 0 {
		return nil, fmt.Errorf("%q: label key %q is invalid: %s", s, k, strings.Join(errs, "; "))
	}
	if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
		return nil, fmt.Errorf("%q: label value %q is invalid: %s", s, v, strings.Join(errs, "; "))
	}
	return &Pool{Key: k, Value: v}, nil
}

func (p Pool) String() string { return p.Key + "=" + p.Value }

// Contains reports whether the node carries the pool label.
func (p Pool) Contains(n *corev1.Node) bool {
	v, ok := n.Labels[p.Key]
	return ok && v == p.Value
}

// outsidePool maps each resource key to a node of that VM or scale set that is not in the pool: attaching an
// identity to a scale set attaches it to every instance, so one instance outside the pool disqualifies the
// whole scale set.
func outsidePool(p *Pool, nodes map[string]*corev1.Node, keyOf func(*corev1.Node) string) map[string]string {
	out := map[string]string{}
	if p == nil {
		return out
	}
	for name, n := range nodes {
		if p.Contains(n) {
			continue
		}
		k := keyOf(n)
		if k == "" {
			continue
		}
		// The smallest name, so that the message is stable across passes.
		if cur, ok := out[k]; !ok || name < cur {
			out[k] = name
		}
	}
	return out
}

// refusal explains why a pod's user-assigned identities are not attached, and what to do.
func refusal(p Pool, podNode, outsider, resourceID string, identities []string) string {
	what := "identities " + strings.Join(identities, ", ") + " are not attached"
	if podNode == outsider {
		return fmt.Sprintf("guard mode: node %s is outside the identity pool (label %s), so %s; run the pod on the pool: "+
			"pods injected by the podidentity webhook get its toleration and node selector, so recreate the pod in a namespace labelled for injection and remove any conflicting nodeSelector", podNode, p, what)
	}
	return fmt.Sprintf("guard mode: %s also runs node %s, which is outside the identity pool (label %s), and an identity attached to it would be reachable from that node, so %s; "+
		"label every node of the scale set (an AKS node pool: --labels) or move the pod to a pool whose nodes all carry the label", resourceID, outsider, p, what)
}
