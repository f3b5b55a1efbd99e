// Package kubeapi reads what the decision needs about a pod (the pod, its namespace, the
// AzurePodIdentityExceptions of its namespace) from the API server, with short timeouts and a few retries, and
// turns every failure into a cause a user can act on. The CNI plugin and the node agent both use it.
package kubeapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/imdspolicy"
)

// Objects are what imdspolicy.Decide needs about one pod.
type Objects struct {
	Pod        *corev1.Pod
	Namespace  *corev1.Namespace
	Exceptions []aadv1.AzurePodIdentityException
}

// Client reads pods, namespaces and exceptions.
type Client struct {
	core corev1client.CoreV1Interface
	aad  rest.Interface
	// Host is the API server's address, for messages.
	Host string
	// source says where the credentials come from, for messages ("the kubeconfig /etc/cni/net.d/...").
	source string
}

// New returns a Client for cfg. source names where cfg came from, for error messages.
func New(cfg *rest.Config, source string) (*Client, error) {
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := aadv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	aadCfg := rest.CopyConfig(cfg)
	aadCfg.GroupVersion = &aadv1.GroupVersion
	aadCfg.APIPath = "/apis"
	aadCfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	aad, err := rest.RESTClientFor(aadCfg)
	if err != nil {
		return nil, err
	}
	return &Client{core: core, aad: aad, Host: cfg.Host, source: source}, nil
}

// FromKubeconfig returns a Client for the kubeconfig file at path, each request bounded by attemptTimeout.
func FromKubeconfig(path, userAgent string, attemptTimeout time.Duration) (*Client, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, &Error{Cause: CauseKubeconfig, Err: err, Msg: fmt.Sprintf("the plugin's kubeconfig %s cannot be read (%v): "+
			"the podidentity-node DaemonSet writes it when it starts; is it running on this node? "+
			"(kubectl get pods -A -o wide --field-selector spec.nodeName=<this node> | grep podidentity-node)", path, err)}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, &Error{Cause: CauseKubeconfig, Err: err, Msg: fmt.Sprintf("the plugin's kubeconfig %s is not usable (%v): "+
			"the podidentity-node DaemonSet rewrites it; is it running on this node?", path, err)}
	}
	cfg.Timeout = attemptTimeout
	cfg.UserAgent = userAgent
	// One request at a time, few of them: no client-side rate limiting to wait on.
	cfg.QPS, cfg.Burst = -1, 0
	c, err := New(cfg, "the kubeconfig "+path)
	if err != nil {
		return nil, &Error{Cause: CauseKubeconfig, Err: err, Msg: fmt.Sprintf("the plugin's kubeconfig %s is not usable (%v): "+
			"the podidentity-node DaemonSet rewrites it; is it running on this node?", path, err)}
	}
	return c, nil
}

// Pod reads a pod.
func (c *Client) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return c.core.Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// Namespace reads a namespace.
func (c *Client) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	return c.core.Namespaces().Get(ctx, name, metav1.GetOptions{})
}

// Exceptions lists the AzurePodIdentityExceptions of a namespace.
func (c *Client) Exceptions(ctx context.Context, namespace string) ([]aadv1.AzurePodIdentityException, error) {
	var list aadv1.AzurePodIdentityExceptionList
	err := c.aad.Get().Namespace(namespace).Resource("azurepodidentityexceptions").Do(ctx).Into(&list)
	return list.Items, err
}

// Retry bounds the attempts of one read.
type Retry struct {
	// Attempts is the most tries per read (at least 1).
	Attempts int
	// Backoff is the first pause between tries; it doubles after each.
	Backoff time.Duration
}

// Fetch reads the pod (checking its UID when uid is not empty), its namespace and its namespace's exceptions,
// retrying transient failures (unreachable, timeouts, 429, 5xx) within ctx's deadline. Failures are *Error.
func (c *Client) Fetch(ctx context.Context, namespace, name, uid string, r Retry) (Objects, error) {
	var out Objects
	err := retry(ctx, r, func(ctx context.Context) error {
		pod, err := c.Pod(ctx, namespace, name)
		if err != nil {
			return c.explain(err, "get", "pods", namespace+"/"+name)
		}
		// A static pod's sandbox carries the kubelet's UID for it, which its mirror pod has as an annotation.
		if uid != "" && pod.UID != types.UID(uid) && pod.Annotations[imdspolicy.MirrorAnnotation] != uid {
			return &Error{Cause: CauseNotFound, Msg: fmt.Sprintf("pod %s/%s has UID %s, but the runtime creates the sandbox of UID %s: "+
				"the pod was deleted and recreated; the kubelet creates a new sandbox for the new pod", namespace, name, pod.UID, uid)}
		}
		out.Pod = pod
		return nil
	})
	if err != nil {
		return Objects{}, err
	}
	if err := retry(ctx, r, func(ctx context.Context) error {
		ns, err := c.Namespace(ctx, namespace)
		if err != nil {
			return c.explain(err, "get", "namespaces", namespace)
		}
		out.Namespace = ns
		return nil
	}); err != nil {
		return Objects{}, err
	}
	if err := retry(ctx, r, func(ctx context.Context) error {
		ex, err := c.Exceptions(ctx, namespace)
		if err != nil {
			return c.explain(err, "list", "azurepodidentityexceptions.aadpodidentity.k8s.io", namespace)
		}
		out.Exceptions = ex
		return nil
	}); err != nil {
		return Objects{}, err
	}
	return out, nil
}

func retry(ctx context.Context, r Retry, fn func(context.Context) error) error {
	pause := r.Backoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		var e *Error
		if err == nil || !errors.As(err, &e) || !e.Transient() || attempt >= r.Attempts {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause *= 2
	}
}

// Cause is the class of a failure; a bounded metric label.
type Cause string

const (
	CauseUnreachable  Cause = "api-unreachable"
	CauseUnauthorized Cause = "unauthorized"
	CauseForbidden    Cause = "forbidden"
	CauseNotFound     Cause = "not-found"
	CauseCRDMissing   Cause = "crd-missing"
	CauseKubeconfig   Cause = "kubeconfig"
	CauseAPIError     Cause = "api-error"
)

// Error is a failure to read from the API server, with what it means and how to fix it.
type Error struct {
	Cause Cause
	Msg   string
	Err   error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// Transient reports whether trying again may help.
func (e *Error) Transient() bool { return e.Cause == CauseUnreachable || e.Cause == CauseAPIError }

// Explain classifies an error of a verb on a resource (object: "namespace/name", or the namespace of a list).
func (c *Client) explain(err error, verb, resource, object string) error {
	return Explain(err, verb, resource, object, c.Host, c.source)
}

// Explain turns an API error into an *Error naming the cause and the fix. host is the API server's address,
// source where the credentials come from.
func Explain(err error, verb, resource, object, host, source string) *Error {
	const agent = "is the podidentity-node DaemonSet running on this node?"
	var (
		urlErr *url.Error
		netErr net.Error
	)
	switch {
	case apierrors.IsUnauthorized(err):
		return &Error{Cause: CauseUnauthorized, Err: err, Msg: fmt.Sprintf("the API server %s rejected the credentials of %s "+
			"(an expired or revoked service account token): %s It rewrites that file with a fresh token (%v)", host, source, agent, err)}
	case apierrors.IsForbidden(err):
		return &Error{Cause: CauseForbidden, Err: err, Msg: fmt.Sprintf("RBAC: the podidentity-node service account may not %s %s (%s): "+
			"its ClusterRole needs pods get/list/watch, namespaces get and azurepodidentityexceptions list; reinstall or fix the chart's RBAC (%v)",
			verb, resource, object, err)}
	case apierrors.IsNotFound(err) && resource == "pods":
		return &Error{Cause: CauseNotFound, Err: err, Msg: fmt.Sprintf("pod %s not found: it was deleted before its sandbox was created; "+
			"nothing to do (%v)", object, err)}
	case apierrors.IsNotFound(err) && verb == "list":
		return &Error{Cause: CauseCRDMissing, Err: err, Msg: fmt.Sprintf("the API server %s does not serve %s: install the project's CRDs "+
			"(helm upgrade --install the chart, or kubectl apply -f manifests/crds) (%v)", host, resource, err)}
	case apierrors.IsNotFound(err):
		return &Error{Cause: CauseNotFound, Err: err, Msg: fmt.Sprintf("%s %s not found (%v)", resource, object, err)}
	case apierrors.IsTooManyRequests(err), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsInternalError(err), apierrors.IsServiceUnavailable(err), apierrors.IsUnexpectedServerError(err):
		return &Error{Cause: CauseAPIError, Err: err, Msg: fmt.Sprintf("the API server %s failed to %s %s %s: %v", host, verb, resource, object, err)}
	case errors.As(err, &urlErr), errors.As(err, &netErr), errors.Is(err, context.DeadlineExceeded):
		return &Error{Cause: CauseUnreachable, Err: err, Msg: fmt.Sprintf("the API server %s is unreachable from the node (%v): %s "+
			"It writes %s with the API server's address; otherwise check the node's network path to the API server", host, err, agent, source)}
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return &Error{Cause: CauseAPIError, Err: err, Msg: fmt.Sprintf("the API server %s failed to %s %s %s: %v", host, verb, resource, object, err)}
	}
	return &Error{Cause: CauseUnreachable, Err: err, Msg: fmt.Sprintf("reading %s %s from %s failed (%v): %s", resource, object, host, err, agent)}
}
