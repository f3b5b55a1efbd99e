package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/webhook/admission"
)

// watchLag is how long the webhook's watches are held back in TestCacheLagNeverSkips: far longer than the
// time between creating an object and a pod that depends on it, so every admission below meets a cache that
// has not seen that object yet.
const watchLag = 200 * time.Millisecond

// TestCacheLagNeverSkips is the regression test of the fail-open race: the webhook's informer caches lag
// behind the API server, and a pod created right after the object that decides its injection (its namespace,
// the namespace's opt-in label, its binding, the deletion of its exception) must still be injected, with its
// identity. The webhook's watch streams are held back by watchLag, so that every one of these admissions
// meets a stale cache (on a lightly loaded API server the race is otherwise rarely lost).
func TestCacheLagNeverSkips(t *testing.T) {
	env := &envtest.Environment{WebhookInstallOptions: envtest.WebhookInstallOptions{
		Paths: []string{filepath.Join(testenv.RepoRoot(), "manifests", "kustomize", "base", "podidentity.yaml")},
	}}
	te := testenv.Start(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := te.Client

	const (
		newNamespaces = 200
		relabelled    = 50
		newBindings   = 50
		deletedExcept = 20
	)
	// What the cache holds when the webhook starts: namespaces without the label yet, and exceptions about
	// to be deleted.
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}})
	for i := range relabelled {
		mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("relabel-%d", i)}})
	}
	for i := range deletedExcept {
		mustCreate(t, c, &aadv1.AzurePodIdentityException{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("batch-%d", i), Namespace: "shop"},
			Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"job": fmt.Sprintf("batch-%d", i)}},
		})
	}

	rc := rest.CopyConfig(te.Config)
	// HTTP/1.1: a held-back watch then holds only its own connection. Over HTTP/2 the watches would share one
	// connection, and their unread data would stall every other request on it by flow control.
	rc.NextProtos = []string{"http/1.1"}
	lagging := &laggingWatches{lag: watchLag}
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		lagging.next = rt
		return lagging
	})
	_, mgr := startWebhook(t, ctx, cancel, env, rc, []string{"--mode=native"}, nil)
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		t.Fatal("caches did not sync")
	}
	// Hold events back from now on: the initial lists (streamed over the watches) arrive at full speed.
	lagging.on.Store(true)

	pod := func(ns, name string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/app:1"}}},
		}
	}
	// create creates the pod and reports what the webhook did to it: the identities it recorded, or "" and
	// false when it was not injected.
	create := func(t *testing.T, p *corev1.Pod) (identities string, ok bool) {
		t.Helper()
		mustCreate(t, c, p) // Create returns the object as admitted
		if !injected(p) {
			return "", false
		}
		ids, err := binding.Decode(p.Annotations[contract.IdentitiesAnnotation])
		if err != nil {
			t.Fatalf("pod %s/%s: identities annotation: %v", p.Namespace, p.Name, err)
		}
		var got []string
		for _, id := range ids {
			got = append(got, id.Namespace+"/"+id.Name)
		}
		return strings.Join(got, ","), true
	}

	t.Run("namespace created just before the pod", func(t *testing.T) {
		// Each of 8 workers creates a namespace and at once its pod, back to back; the API server pauses
		// about 0.1 s before admitting a pod of a namespace it has just created, and the workers keep the
		// test short.
		var (
			mu      sync.Mutex
			skipped []string
			wg      sync.WaitGroup
			next    = make(chan int)
		)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					ns := fmt.Sprintf("fresh-%d", i)
					p := pod(ns, "app", nil)
					err := errors.Join(
						c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}),
						c.Create(ctx, p))
					mu.Lock()
					switch {
					case err != nil:
						t.Errorf("namespace %s: %v", ns, err)
					case !injected(p):
						skipped = append(skipped, ns)
					}
					mu.Unlock()
				}
			}()
		}
		for i := range newNamespaces {
			next <- i
		}
		close(next)
		wg.Wait()
		if len(skipped) > 0 {
			t.Errorf("%d of %d pods created right after their opted-in namespace were admitted without injection (fail open): %v", len(skipped), newNamespaces, skipped)
		}
	})

	t.Run("label added to an existing namespace just before the pod", func(t *testing.T) {
		var skipped []string
		for i := range relabelled {
			ns := fmt.Sprintf("relabel-%d", i)
			label := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"labels":{%q:"enabled"}}}`, contract.NamespaceInjectionLabel))
			if err := c.Patch(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, label); err != nil {
				t.Fatal(err)
			}
			if _, ok := create(t, pod(ns, "app", nil)); !ok {
				skipped = append(skipped, ns)
			}
		}
		if len(skipped) > 0 {
			t.Errorf("%d of %d pods created right after their namespace was labelled were admitted without injection (fail open): %v", len(skipped), relabelled, skipped)
		}
	})

	t.Run("binding created just before the pod", func(t *testing.T) {
		var missed []string
		for i := range newBindings {
			name := fmt.Sprintf("mi-%d", i)
			mustCreate(t, c, &aadv1.AzureIdentity{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
				Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: fmt.Sprintf("00000000-0000-0000-0000-%012d", i),
					ResourceID: "/subscriptions/1111/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name},
			})
			mustCreate(t, c, &aadv1.AzureIdentityBinding{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
				Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: name, Selector: name},
			})
			ids, ok := create(t, pod("shop", "bound-"+name, map[string]string{aadv1.PodLabelBinding: name}))
			if !ok || ids != "shop/"+name {
				missed = append(missed, fmt.Sprintf("%s (injected %v, identities %q)", name, ok, ids))
			}
		}
		if len(missed) > 0 {
			t.Errorf("%d of %d pods created right after their binding did not get its identity: %v", len(missed), newBindings, missed)
		}
	})

	t.Run("exception deleted just before the pod", func(t *testing.T) {
		var skipped []string
		for i := range deletedExcept {
			name := fmt.Sprintf("batch-%d", i)
			if err := c.Delete(ctx, &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"}}); err != nil {
				t.Fatal(err)
			}
			if _, ok := create(t, pod("shop", name, map[string]string{"job": name})); !ok {
				skipped = append(skipped, name)
			}
		}
		if len(skipped) > 0 {
			t.Errorf("%d of %d pods created right after their exception was deleted were admitted without injection (fail open): %v", len(skipped), deletedExcept, skipped)
		}
	})

	// The admissions above read the cache by key: the handler registered its index of bindings by selector
	// on the manager's cache at the first one (a cache without it answers a list by field with an error).
	var bl aadv1.AzureIdentityBindingList
	if err := mgr.GetCache().List(ctx, &bl, client.MatchingFields{admission.BindingSelectorField: "mi-0"}); err != nil || len(bl.Items) != 1 {
		t.Errorf("list by %s=mi-0: %d bindings, %v; want the one binding", admission.BindingSelectorField, len(bl.Items), err)
	}
}

// injected reports whether the pod, as admitted, carries both injected containers.
func injected(p *corev1.Pod) bool {
	names := make([]string, 0, len(p.Spec.InitContainers))
	for _, ic := range p.Spec.InitContainers {
		names = append(names, ic.Name)
	}
	return slices.Contains(names, contract.InitContainerName) && slices.Contains(names, contract.SidecarContainerName)
}

// laggingWatches holds back every byte of a watch stream by lag before the client sees it: an informer then
// learns of each change at least lag after the API server made it, as when the API server or the network is
// slow.
type laggingWatches struct {
	next http.RoundTripper
	lag  time.Duration
	on   atomic.Bool
}

func (l *laggingWatches) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	if err != nil || req.URL.Query().Get("watch") != "true" {
		return resp, err
	}
	resp.Body = &laggingBody{ReadCloser: resp.Body, watches: l}
	return resp, nil
}

type laggingBody struct {
	io.ReadCloser
	watches *laggingWatches
}

func (b *laggingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 && b.watches.on.Load() {
		time.Sleep(b.watches.lag)
	}
	return n, err
}
