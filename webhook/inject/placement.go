package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
)

// ReasonPoolConflict denies a pod that asks for identities but pins itself off the identity pool.
const ReasonPoolConflict Reason = "identity-pool-conflict"

// Placement is guard mode's pinning of identity-bearing pods to the identity pool: a node label that selects
// the pool's nodes and the taint that keeps every other pod off them. Only pods the webhook injects get the
// toleration, so (with the admission policy refusing un-injected pods that tolerate the taint) the pool runs
// isolated pods and trusted system pods only, and the assigner attaches identities to the pool only.
type Placement struct {
	LabelKey, LabelValue string
	Taint                corev1.Taint
}

// Toleration is the toleration the webhook adds: exactly the pool's taint, nothing wider.
func (p Placement) Toleration() corev1.Toleration {
	return corev1.Toleration{Key: p.Taint.Key, Operator: corev1.TolerationOpEqual, Value: p.Taint.Value, Effect: p.Taint.Effect}
}

// ParsePlacement reads --identity-pool-label (key=value) and --identity-pool-taint (key=value:Effect). Both
// empty means guard mode is off (nil); one without the other is an error, since a pool without a taint lets
// any pod in and a taint without a label does not keep identity pods on the pool.
func ParsePlacement(label, taint string) (*Placement, error) {
	if label == "" && taint == "" {
		return nil, nil
	}
	if label == "" || taint == "" {
		return nil, fmt.Errorf("guard mode needs both --identity-pool-label (key=value) and --identity-pool-taint (key=value:NoExecute); set both or neither")
	}
	p := &Placement{}
	k, v, ok := strings.Cut(label, "=")
	if !ok || len(validation.IsQualifiedName(k)) > 0 || len(validation.IsValidLabelValue(v)) > 0 {
		return nil, fmt.Errorf("--identity-pool-label=%q: want a node label key=value, for example podidentity.io/pool=identities", label)
	}
	p.LabelKey, p.LabelValue = k, v
	kv, effect, ok := strings.Cut(taint, ":")
	k, v, _ = strings.Cut(kv, "=")
	if !ok || k == "" || len(validation.IsQualifiedName(k)) > 0 || len(validation.IsValidLabelValue(v)) > 0 {
		return nil, fmt.Errorf("--identity-pool-taint=%q: want a node taint key=value:Effect, for example podidentity.io/pool=identities:NoExecute", taint)
	}
	// Only NoExecute keeps every other pod off: the scheduler honours NoSchedule, but a pod created with
	// spec.nodeName skips the scheduler, and the kubelet refuses only pods that do not tolerate NoExecute.
	if corev1.TaintEffect(effect) != corev1.TaintEffectNoExecute {
		return nil, fmt.Errorf("--identity-pool-taint=%q: the effect must be NoExecute: with %q a pod that sets spec.nodeName skips the scheduler and the kubelet still runs it on the pool (it enforces only NoExecute taints); taint the pool key=value:NoExecute", taint, effect)
	}
	p.Taint = corev1.Taint{Key: k, Value: v, Effect: corev1.TaintEffectNoExecute}
	return p, nil
}

// placementPatch pins a pod that asks for identities (label aadpodidbinding) to the pool: a nodeSelector for
// the pool label (ANDed with whatever affinity the pod has) and a toleration for the pool taint. It adds only
// what is missing, so a reinvocation changes nothing; a nodeSelector for another value of the pool label
// cannot be satisfied together with ours and is refused.
func placementPatch(pod *corev1.Pod, p *Placement) (patch, *Decision) {
	if p == nil || binding.Selector(pod) == "" {
		return nil, nil
	}
	var out patch
	switch cur, ok := pod.Spec.NodeSelector[p.LabelKey]; {
	case ok && cur != p.LabelValue:
		d := deny(ReasonPoolConflict, fmt.Sprintf("guard mode keeps user-assigned identities on the identity pool (nodes labelled %s=%s), but the pod's nodeSelector asks for %s=%s; remove that nodeSelector entry or the %s label",
			p.LabelKey, p.LabelValue, p.LabelKey, cur, aadv1.PodLabelBinding))
		return nil, &d
	case !ok:
		out.setKey("/spec/nodeSelector", len(pod.Spec.NodeSelector), p.LabelKey, p.LabelValue)
	}
	want := p.Toleration()
	for _, t := range pod.Spec.Tolerations {
		op := t.Operator
		if op == "" {
			op = corev1.TolerationOpEqual
		}
		if t.Key == want.Key && op == want.Operator && t.Value == want.Value && t.Effect == want.Effect {
			return out, nil
		}
	}
	appendTo(&out, "/spec/tolerations", len(pod.Spec.Tolerations), []corev1.Toleration{want})
	return out, nil
}
