package admission

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// clusterObjects is what a test cache holds.
type clusterObjects struct {
	Namespaces []corev1.Namespace
	Bindings   []aadv1.AzureIdentityBinding
	Identities []aadv1.AzureIdentity
	Exceptions []aadv1.AzurePodIdentityException
}

// newRealCache starts controller-runtime's informer cache, the one the manager gives the handler in
// production (same informers, indexer, cache reader), fed from memory instead of an API server: each
// informer lists objs once and its watch stays silent. No index is registered on it.
func newRealCache(t testing.TB, objs clusterObjects) cache.Cache {
	t.Helper()
	ctrllog.SetLogger(logr.Discard()) // the reflector logs through controller-runtime's logger; keep it quiet
	scheme := testScheme(t)
	gv := aadv1.GroupVersion
	mapper := meta.NewDefaultRESTMapper(nil)
	mapper.Add(corev1.SchemeGroupVersion.WithKind("Namespace"), meta.RESTScopeRoot)
	for _, kind := range []string{"AzureIdentityBinding", "AzureIdentity", "AzurePodIdentityException"} {
		mapper.Add(gv.WithKind(kind), meta.RESTScopeNamespace)
	}
	lists := map[schema.GroupVersionKind]runtime.Object{
		corev1.SchemeGroupVersion.WithKind("Namespace"): &corev1.NamespaceList{Items: objs.Namespaces},
		gv.WithKind("AzureIdentityBinding"):             &aadv1.AzureIdentityBindingList{Items: objs.Bindings},
		gv.WithKind("AzureIdentity"):                    &aadv1.AzureIdentityList{Items: objs.Identities},
		gv.WithKind("AzurePodIdentityException"):        &aadv1.AzurePodIdentityExceptionList{Items: objs.Exceptions},
	}
	for _, l := range lists {
		l.(metav1.ListInterface).SetResourceVersion("1")
	}
	c, err := cache.New(&rest.Config{Host: "http://127.0.0.1:1"}, cache.Options{
		Scheme: scheme,
		Mapper: mapper,
		NewInformer: func(_ toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, indexers toolscache.Indexers) toolscache.SharedIndexInformer {
			gvks, _, err := scheme.ObjectKinds(obj)
			if err != nil {
				panic(err)
			}
			list, ok := lists[gvks[0]]
			if !ok {
				panic("no test list for " + gvks[0].String())
			}
			return toolscache.NewSharedIndexInformer(memListWatch{list}, obj, resync, indexers)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, obj := range []client.Object{&corev1.Namespace{}, &aadv1.AzureIdentityBinding{}, &aadv1.AzureIdentity{}, &aadv1.AzurePodIdentityException{}} {
		if _, err := c.GetInformer(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		t.Fatal("cache did not sync")
	}
	return c
}

// memListWatch lists a fixed list (the reflector keeps pointers into it; nothing writes to it) and watches
// nothing.
type memListWatch struct{ list runtime.Object }

func (l memListWatch) List(metav1.ListOptions) (runtime.Object, error)   { return l.list, nil }
func (l memListWatch) Watch(metav1.ListOptions) (watch.Interface, error) { return watch.NewFake(), nil }

// IsWatchListSemanticsUnSupported makes the reflector list, not stream the initial state over a watch.
func (memListWatch) IsWatchListSemanticsUnSupported() bool { return true }

// countingCache counts the lists of every binding or identity (no field selector) read through it.
type countingCache struct {
	cache.Cache
	fullLists atomic.Int64
}

func (c *countingCache) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	var o client.ListOptions
	o.ApplyOptions(opts)
	switch list.(type) {
	case *aadv1.AzureIdentityBindingList, *aadv1.AzureIdentityList:
		if o.FieldSelector == nil {
			c.fullLists.Add(1)
		}
	}
	return c.Cache.List(ctx, list, opts...)
}
