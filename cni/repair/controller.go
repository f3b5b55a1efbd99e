package repair

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Controller runs the Reconciler for the pods of one node: on every pod event (a sidecar that starts or
// restarts shows up as a status update within a second or so) and for every pod each resync interval (pods
// whose table disappeared without any pod event, and the pods already running when the agent starts).
type Controller struct {
	Reconciler *Reconciler
	Client     kubernetes.Interface
	Node       string
	// Resync is the interval of the full pass.
	Resync time.Duration
	// Workers reconcile in parallel (different pods only).
	Workers int
}

// Run runs until ctx ends. synced is closed once the pod cache is filled and the first pass is queued.
func (c *Controller) Run(ctx context.Context, synced chan<- struct{}) {
	factory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", c.Node).String()
		}))
	informer := factory.Core().V1().Pods()
	lister := informer.Lister()
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "podidentity-node"})
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	_, _ = informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				c.Reconciler.Forget(pod.UID)
			}
		},
	})
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.Informer().HasSynced) {
		return
	}
	pass := func() {
		pods, err := lister.List(labels.Everything())
		if err != nil {
			return
		}
		keep := map[types.UID]bool{}
		for _, p := range pods {
			keep[p.UID] = true
			enqueue(p)
		}
		c.Reconciler.Retain(keep)
	}
	pass()
	if synced != nil {
		close(synced)
	}
	workers := max(c.Workers, 1)
	for range workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for c.process(ctx, queue, lister) {
			}
		}, time.Second)
	}
	wait.UntilWithContext(ctx, func(context.Context) { pass() }, c.Resync)
}

func (c *Controller) process(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], pods corelisters.PodLister) bool {
	key, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(key)
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		queue.Forget(key)
		return true
	}
	pod, err := pods.Pods(ns).Get(name)
	if err != nil { // deleted meanwhile
		queue.Forget(key)
		return true
	}
	if _, err := c.Reconciler.Reconcile(ctx, pod); err != nil {
		queue.AddRateLimited(key)
		return true
	}
	queue.Forget(key)
	return true
}
