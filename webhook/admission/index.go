package admission

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	sigsjson "sigs.k8s.io/json"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/webhook/inject"
)

// BindingSelectorField is the cache index of AzureIdentityBindings by spec.selector (binding.SelectorField).
// The handler registers it on its Reader when the Reader is a client.FieldIndexer (the manager's cache) and
// none is there yet; a Reader built with it (a fake client's WithIndex) is used as it is.
const BindingSelectorField = binding.SelectorField

// bindingSelector is the index function of BindingSelectorField.
func bindingSelector(obj client.Object) []string { return binding.IndexSelector(obj) }

// indexProbe is a selector no label can carry (label values have no NUL): listing it answers nothing, or
// an error when the Reader has no index on BindingSelectorField.
const indexProbe = "\x00"

func probeIndex(ctx context.Context, r client.Reader) error {
	var l aadv1.AzureIdentityBindingList
	return r.List(ctx, &l, client.MatchingFields{BindingSelectorField: indexProbe}, client.UnsafeDisableDeepCopy)
}

// useIndex reports whether Reader answers keyed reads, registering the index the first time if it can. The
// informers of the manager's cache are running by then; an informer indexes what it already holds when an
// index is added.
func (h *Handler) useIndex(ctx context.Context) bool {
	if h.fullWalk {
		return false
	}
	h.indexOnce.Do(func() {
		ctx := context.WithoutCancel(ctx)
		if probeIndex(ctx, h.Reader) == nil {
			h.indexed = true
			return
		}
		fi, ok := h.Reader.(client.FieldIndexer)
		if !ok {
			h.Log.Info("the cache has no index of AzureIdentityBindings by spec.selector and cannot take one: every admission lists all bindings and identities")
			return
		}
		err := fi.IndexField(ctx, &aadv1.AzureIdentityBinding{}, BindingSelectorField, bindingSelector)
		if err == nil {
			err = probeIndex(ctx, h.Reader)
		}
		if err != nil {
			h.Log.Error(err, "indexing AzureIdentityBindings by spec.selector failed: every admission lists all bindings and identities")
			return
		}
		h.indexed = true
	})
	return h.indexed
}

// readCached reads from the cache what the decision on the pod needs. With the index that is the pod's share
// only: the exceptions of its namespace (the cache's namespace index), the bindings of its selector and the
// identities they name (binding.Candidates), so the cost does not grow with the cluster. inject.Decide over
// this share decides exactly as over everything (binding.Candidates' contract; Decide reads bindings and
// identities only through binding.Resolve and the secret namespace of the identities Resolve returns).
// Without the index, or for an object that does not decode (Decide denies it), everything is listed, as
// before the index.
func (h *Handler) readCached(ctx context.Context, req admission.Request) (inject.Cluster, error) {
	force := h.Settings.ForceNamespaced
	if !h.useIndex(ctx) {
		return readCluster(ctx, h.Reader, req.Namespace, force, partsAll)
	}
	pod, ok := podKeys(req.Object.Raw, req.Namespace)
	if !ok {
		return readCluster(ctx, h.Reader, req.Namespace, force, partsAll)
	}
	cluster, err := readCluster(ctx, h.Reader, req.Namespace, force, partsExceptions)
	if err != nil {
		return cluster, err
	}
	src := &binding.ReaderSource{Ctx: ctx, Reader: h.Reader}
	if force {
		src.Namespace = req.Namespace // what readCluster would have listed
	}
	cluster.Bindings, cluster.Identities, err = binding.Candidates(pod, src, binding.Options{ForceNamespaced: force})
	return cluster, err
}

// podKeys reads the keys of the cached reads: the pod's namespace (the request's when the object has none) and
// its aadpodidbinding label, as inject.Decide reads them: the same case-sensitive decoder, where a later
// duplicate key wins and null clears the label. Other labels are not decoded; a value of the wrong type
// there makes Decide deny the pod whatever was read. ok is false when the object does not decode.
func podKeys(raw []byte, namespace string) (pod *corev1.Pod, ok bool) {
	var v struct {
		Metadata *struct {
			Namespace string `json:"namespace"`
			Labels    *struct {
				Selector *string `json:"aadpodidbinding"`
			} `json:"labels"`
		} `json:"metadata"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &v); err != nil {
		return nil, false
	}
	pod = &corev1.Pod{}
	if m := v.Metadata; m != nil {
		pod.Namespace = m.Namespace
		if m.Labels != nil && m.Labels.Selector != nil {
			pod.Labels = map[string]string{aadv1.PodLabelBinding: *m.Labels.Selector}
		}
	}
	if pod.Namespace == "" {
		pod.Namespace = namespace
	}
	return pod, true
}
