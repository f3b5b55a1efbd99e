package binding

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// mapSource is a Source keyed as an informer index is: bindings by spec.selector, identities by
// namespace/name. It records what it was asked. With noisy set it answers every selector with every binding,
// which a Source may do (Candidates must ignore the others).
type mapSource struct {
	bySelector map[string][]aadv1.AzureIdentityBinding
	all        []aadv1.AzureIdentityBinding
	byKey      map[string]*aadv1.AzureIdentity
	noisy      bool
	selectors  []string
	lookups    []string
}

func newMapSource(bindings []aadv1.AzureIdentityBinding, identities []aadv1.AzureIdentity) *mapSource {
	s := &mapSource{bySelector: map[string][]aadv1.AzureIdentityBinding{}, all: bindings, byKey: map[string]*aadv1.AzureIdentity{}}
	for _, b := range bindings {
		s.bySelector[b.Spec.Selector] = append(s.bySelector[b.Spec.Selector], b)
	}
	for i := range identities {
		s.byKey[identities[i].Namespace+"/"+identities[i].Name] = &identities[i]
	}
	return s
}

func (s *mapSource) BindingsWithSelector(sel string) ([]aadv1.AzureIdentityBinding, error) {
	s.selectors = append(s.selectors, sel)
	if s.noisy {
		return append([]aadv1.AzureIdentityBinding(nil), s.all...), nil
	}
	return append([]aadv1.AzureIdentityBinding(nil), s.bySelector[sel]...), nil
}

func (s *mapSource) Identity(ns, name string) (*aadv1.AzureIdentity, error) {
	s.lookups = append(s.lookups, ns+"/"+name)
	return s.byKey[ns+"/"+name], nil
}

// resolveIndexed is the webhook's path: look the pod's candidates up by key, then Resolve over them.
func resolveIndexed(t *testing.T, pod *corev1.Pod, src Source, opts Options) ([]Identity, []Problem) {
	t.Helper()
	b, i, err := Candidates(pod, src, opts)
	if err != nil {
		t.Fatalf("Candidates: %v", err)
	}
	return Resolve(pod, b, i, opts)
}

// TestCandidatesLooksUpOnlyWhatThePodAsksFor: one selector lookup, one identity lookup per distinct
// identity named by a binding of that selector, nothing for a pod without the label.
func TestCandidatesLooksUpOnlyWhatThePodAsksFor(t *testing.T) {
	bindings := []aadv1.AzureIdentityBinding{
		bind("apps", "b1", "web", "web", 0), bind("apps", "b2", "web", "web", 3), bind("shared", "b3", "web", "web", 1),
		bind("apps", "b4", "", "web", 0), bind("apps", "b5", "db", "db", 0), bind("other", "b6", "x", "Web", 0),
	}
	identities := []aadv1.AzureIdentity{mi("apps", "web", nil), mi("apps", "db", nil), mi("other", "x", nil)}
	for _, tc := range []struct {
		name         string
		pod          *corev1.Pod
		opts         Options
		wantSelector []string
		wantLookups  []string
		wantBindings int
	}{
		{"selector web", pod("apps", "web"), Options{}, []string{"web"}, []string{"apps/web", "shared/web"}, 4},
		{"selector web, namespaced", pod("apps", "web"), Options{ForceNamespaced: true}, []string{"web"}, []string{"apps/web"}, 3},
		{"no label", pod("apps", ""), Options{}, nil, nil, 0},
		{"selector nobody uses", pod("apps", "nothing"), Options{}, []string{"nothing"}, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newMapSource(bindings, identities)
			b, _, err := Candidates(tc.pod, src, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(src.selectors, tc.wantSelector) || !reflect.DeepEqual(src.lookups, tc.wantLookups) {
				t.Errorf("asked for selectors %v and identities %v, want %v and %v", src.selectors, src.lookups, tc.wantSelector, tc.wantLookups)
			}
			if len(b) != tc.wantBindings {
				t.Errorf("%d candidate bindings, want %d: %v", len(b), tc.wantBindings, b)
			}
		})
	}
}

// TestCandidatesSameAsFullWalk: on random clusters (namespaces, selectors differing in case or by a suffix,
// empty and missing identity names, every identity type, valid and invalid specs, the namespaced annotation in
// any case, weights with ties, forceNamespaced on and off), Resolve over the keyed candidates returns exactly
// what Resolve over every object returns: the identities, their order and weights, and the problems. Object
// keys are unique, as in any API server.
func TestCandidatesSameAsFullWalk(t *testing.T) {
	const trials = 20000
	namespaces := []string{"apps", "shared", "other"}
	selectors := []string{"web", "Web", "web2", "", "db"}
	names := []string{"a", "b", "web", "sp"}
	var bound, problems, empty int
	for seed := range uint64(trials) {
		r := rand.New(rand.NewPCG(seed, 22))
		pick := func(s []string) string { return s[r.IntN(len(s))] }

		var identities []aadv1.AzureIdentity
		seen := map[string]bool{}
		for range r.IntN(9) {
			ns, name := pick(namespaces), pick(names)
			if seen[ns+"/"+name] {
				continue
			}
			seen[ns+"/"+name] = true
			id := mi(ns, name, nil)
			switch r.IntN(8) {
			case 0:
				id.Annotations = map[string]string{aadv1.BehaviorAnnotation: aadv1.BehaviorNamespaced}
			case 1:
				id.Annotations = map[string]string{aadv1.BehaviorAnnotation: "NAMESPACED"}
			case 2:
				id.Annotations = map[string]string{aadv1.BehaviorAnnotation: "cluster"}
			}
			switch r.IntN(8) {
			case 0:
				id.Spec.ResourceID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
			case 1:
				id.Spec.ClientID = ""
			case 2, 3:
				id.Spec = aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal + aadv1.IdentityType(r.IntN(2)), ClientID: "c-" + name, TenantID: "t",
					ClientPassword: corev1.SecretReference{Name: pick([]string{"s", ""}), Namespace: pick(append([]string{""}, namespaces...))}}
			case 4:
				id.Spec.Type = 7
			}
			identities = append(identities, id)
		}
		p := pod(pick(namespaces), pick(selectors))
		var bindings []aadv1.AzureIdentityBinding
		for i := range r.IntN(11) {
			// Half of the bindings select the pod and live in its namespace, so that many trials bind.
			ns, sel := pick(namespaces), pick(selectors)
			if r.IntN(2) == 0 {
				ns, sel = p.Namespace, Selector(p)
			}
			identity := pick(append([]string{"", "missing"}, names...))
			bindings = append(bindings, bind(ns, fmt.Sprintf("b%d", i), identity, sel, r.IntN(4)-1))
		}
		r.Shuffle(len(identities), func(i, j int) { identities[i], identities[j] = identities[j], identities[i] })
		r.Shuffle(len(bindings), func(i, j int) { bindings[i], bindings[j] = bindings[j], bindings[i] })
		opts := Options{ForceNamespaced: r.IntN(2) == 0}

		wantIDs, wantProblems := Resolve(p, bindings, identities, opts)
		for _, noisy := range []bool{false, true} {
			src := newMapSource(bindings, identities)
			src.noisy = noisy
			gotIDs, gotProblems := resolveIndexed(t, p, src, opts)
			if !reflect.DeepEqual(gotIDs, wantIDs) || !reflect.DeepEqual(gotProblems, wantProblems) {
				t.Fatalf("seed %d (noisy source %v): pod %s selector %q, %+v\nbindings %+v\nidentities %+v\nindexed: %+v %v\nfull walk: %+v %v",
					seed, noisy, p.Namespace, Selector(p), opts, bindings, identities, gotIDs, gotProblems, wantIDs, wantProblems)
			}
		}
		switch {
		case len(wantIDs) > 0:
			bound++
		case len(wantProblems) == 0:
			empty++
		}
		if len(wantProblems) > 0 {
			problems++
		}
	}
	// The generator must exercise every outcome, or the comparison above proves little.
	t.Logf("%d trials: %d bound an identity, %d reported problems, %d bound nothing without a problem", trials, bound, problems, empty)
	if bound < trials/10 || problems < trials/10 || empty < trials/10 {
		t.Errorf("generator too narrow: %d bound, %d with problems, %d empty of %d", bound, problems, empty, trials)
	}
}
