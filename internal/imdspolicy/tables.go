package imdspolicy

import (
	"github.com/podidentity/podidentity/internal/redirect"
)

// TableState is how a pod's live table compares with its decision; a bounded metric label.
type TableState string

const (
	// TableOK: the live table is what the decision asks for (for None: whatever is there).
	TableOK TableState = "ok"
	// TableMissing: the decision asks for a table and there is none: the pod is unprotected.
	TableMissing TableState = "missing"
	// TableWrong: there is a table but not the one the decision asks for (another action, a stale config, a
	// hand edit, a uid exemption).
	TableWrong TableState = "wrong"
)

// Want is the table a new sandbox gets for an action: none for None, the fence, or the redirect without any
// exemption (the node agent adds the sidecar's once it runs). ok is false for None.
func Want(a Action, cfg redirect.Config) (rs redirect.Ruleset, ok bool) {
	switch a {
	case Fence:
		return redirect.Fence(cfg), true
	case Redirect:
		return redirect.Desired(cfg), true
	}
	return redirect.Ruleset{}, false
}

// Assess compares a live table (found false: no table) with the action. A redirect table may carry a cgroup
// exemption, the node agent's: it is accepted whatever cgroup it names, as podidentity-init --verify accepts
// it, and returned. A uid exemption is never accepted (CNI mode does not install one), nor an exemption of the
// root cgroup (every process of the node would pass).
func Assess(a Action, cfg redirect.Config, live redirect.Ruleset, found bool) (TableState, redirect.Exemption) {
	switch a {
	case Fence:
		switch {
		case !found:
			return TableMissing, redirect.Exemption{}
		case redirect.Render(live) == redirect.Render(redirect.Fence(cfg)):
			return TableOK, redirect.Exemption{}
		}
		return TableWrong, redirect.Exemption{}
	case Redirect:
		if !found {
			return TableMissing, redirect.Exemption{}
		}
		ex := redirect.ExemptionOf(live)
		withEx := cfg.WithExemption(redirect.Exemption{Cgroup: ex.Cgroup})
		if ex.UID != 0 || withEx.Validate() != nil {
			return TableWrong, ex
		}
		if redirect.Render(live) == redirect.Render(redirect.Desired(withEx)) {
			return TableOK, ex
		}
		return TableWrong, ex
	}
	return TableOK, redirect.Exemption{}
}

// StepKind is what the node agent does to one pod's table; a bounded metric label.
type StepKind string

const (
	// StepNone: the table is right; nothing is sent.
	StepNone StepKind = "none"
	// StepRepair: the table was missing or wrong: the pod ran without its protection until now.
	StepRepair StepKind = "repair"
	// StepExempt: the redirect is right but does not exempt the sidecar container that runs now (it just
	// started, or restarted in a new cgroup).
	StepExempt StepKind = "exempt"
)

// Step is the plan for one pod's table.
type Step struct {
	Kind StepKind
	// Was is the table's state before the step.
	Was TableState
	// Want is the table to apply; meaningful unless Kind is StepNone.
	Want redirect.Ruleset
}

// Plan is what the node agent does to a pod's table, given the pod's action, its live table and the cgroup of
// its sidecar container when that runs (nil otherwise). It never removes a table (None changes nothing: the
// project never loosens a pod on its own; restart the pod instead), and it exempts a cgroup only for a pod
// whose action is Redirect, which Decide gives only to a genuinely injected pod.
func Plan(a Action, cfg redirect.Config, live redirect.Ruleset, found bool, sidecar *redirect.Cgroup) Step {
	state, ex := Assess(a, cfg, live, found)
	switch a {
	case Fence:
		if state == TableOK {
			return Step{Kind: StepNone, Was: state}
		}
		return Step{Kind: StepRepair, Was: state, Want: redirect.Fence(cfg)}
	case Redirect:
		if sidecar == nil || cfg.WithExemption(redirect.Exemption{Cgroup: *sidecar}).Validate() != nil {
			// The sidecar does not run (yet, or between restarts): keep whatever valid exemption is there.
			if state == TableOK {
				return Step{Kind: StepNone, Was: state}
			}
			return Step{Kind: StepRepair, Was: state, Want: redirect.Desired(cfg)}
		}
		want := redirect.Desired(cfg.WithExemption(redirect.Exemption{Cgroup: *sidecar}))
		switch {
		case state == TableOK && ex.Cgroup == *sidecar:
			return Step{Kind: StepNone, Was: state}
		case state == TableOK:
			return Step{Kind: StepExempt, Was: state, Want: want}
		}
		return Step{Kind: StepRepair, Was: state, Want: want}
	}
	return Step{Kind: StepNone, Was: TableOK}
}
