package binding

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// SelectorField is the cache index of AzureIdentityBindings by spec.selector (the value a pod's
// aadpodidbinding label must equal), registered with IndexSelector as its function. The webhook and the
// assigner both read bindings through it, so that resolving one pod does not walk every binding.
const SelectorField = "spec.selector"

// IndexSelector is the index function of SelectorField: the exact value, case and all.
func IndexSelector(obj client.Object) []string {
	b, ok := obj.(*aadv1.AzureIdentityBinding)
	if !ok {
		return nil
	}
	return []string{b.Spec.Selector}
}

// ReaderSource is a Source over a controller-runtime cache that has the SelectorField index: bindings by
// selector, identities by key. Objects are the cache's own (no deep copy): Candidates and Resolve only read
// them.
type ReaderSource struct {
	Ctx    context.Context
	Reader client.Reader
	// Namespace, when set, limits both to one namespace (ForceNamespaced).
	Namespace string
}

// BindingsWithSelector lists the bindings of the selector through the index.
func (s *ReaderSource) BindingsWithSelector(selector string) ([]aadv1.AzureIdentityBinding, error) {
	var l aadv1.AzureIdentityBindingList
	opts := []client.ListOption{client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector(SelectorField, selector)}, client.UnsafeDisableDeepCopy}
	if s.Namespace != "" {
		opts = append(opts, client.InNamespace(s.Namespace))
	}
	if err := s.Reader.List(s.Ctx, &l, opts...); err != nil {
		return nil, err
	}
	return l.Items, nil
}

// Identity reads one AzureIdentity; nil when there is none.
func (s *ReaderSource) Identity(namespace, name string) (*aadv1.AzureIdentity, error) {
	if s.Namespace != "" && namespace != s.Namespace {
		return nil, nil
	}
	var id aadv1.AzureIdentity
	err := s.Reader.Get(s.Ctx, client.ObjectKey{Namespace: namespace, Name: name}, &id, client.UnsafeDisableDeepCopy)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &id, nil
}
