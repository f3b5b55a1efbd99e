package upgrade

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

const (
	// ConfigMapName is the ConfigMap, in the assigner's namespace, that records the upgrade. AAD Pod Identity's
	// MIC used a ConfigMap of this name for the same purpose; the data key below is this project's own.
	ConfigMapName = "aad-pod-identity-config"
	// DoneKey is the ConfigMap data key whose value, Version, says the upgrade has completed.
	DoneKey = "podidentity.crdFieldNamesUpgrade"
	// Version names this upgrade (pre-1.6 PascalCase fields to camelCase). A later, different upgrade would
	// use a new value so that clusters upgraded by this one still run it.
	Version = "v1.6-camelCase"
	// CompletedAtKey records when the upgrade completed (RFC 3339), for operators.
	CompletedAtKey = "podidentity.crdFieldNamesUpgradeCompletedAt"

	pageSize = 500
)

// Kinds are the kinds Run upgrades, in order.
func Kinds() []Kind {
	return []Kind{AzureIdentity, AzureIdentityBinding, AzureAssignedIdentity, AzurePodIdentityException}
}

// Result counts what Run did per kind.
type Result struct {
	// Skipped is true when the ConfigMap said the upgrade had already run.
	Skipped bool
	// Scanned and Upgraded count objects read and objects rewritten, per kind.
	Scanned, Upgraded map[Kind]int
}

// Options tune Run.
type Options struct {
	// Force upgrades even when the ConfigMap records that it was done (the one-shot command does this).
	Force bool
}

// Run upgrades every object of the four kinds in all namespaces once and then records completion in the
// ConfigMap ConfigMapName in namespace. When the ConfigMap already records it, Run does nothing unless
// opts.Force.
//
// The API server prunes fields its structural CRD schema does not know, also when it reads objects stored
// before that schema was installed (upgrade's integration test checks this). So PascalCase fields are only
// visible, and only upgraded, while the installed CRDs still preserve unknown fields in spec and status, as
// the pre-1.6 ones did: with this project's CRDs installed, Run finds nothing to rewrite. Run is
// idempotent and safe to repeat or to run from several replicas at once: an object already upgraded is left
// alone, and a conflicting write is retried on a fresh copy. c must read from the API server, not a cache.
func Run(ctx context.Context, c client.Client, namespace string, log logr.Logger, opts Options) (Result, error) {
	res := Result{Scanned: map[Kind]int{}, Upgraded: map[Kind]int{}}
	done, err := completed(ctx, c, namespace)
	if err != nil {
		return res, err
	}
	if done && !opts.Force {
		log.V(1).Info("CRD field names already upgraded", "configMap", namespace+"/"+ConfigMapName, "key", DoneKey)
		res.Skipped = true
		return res, nil
	}
	for _, k := range Kinds() {
		if err := upgradeKind(ctx, c, k, &res); err != nil {
			return res, err
		}
		log.Info("upgraded pre-1.6 field names", "kind", k, "scanned", res.Scanned[k], "rewritten", res.Upgraded[k])
	}
	if err := record(ctx, c, namespace, time.Now()); err != nil {
		return res, err
	}
	log.Info("recorded CRD field name upgrade", "configMap", namespace+"/"+ConfigMapName, "key", DoneKey, "value", Version)
	return res, nil
}

func completed(ctx context.Context, c client.Client, namespace string) (bool, error) {
	var cm corev1.ConfigMap
	err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ConfigMapName}, &cm)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading ConfigMap %s/%s (the assigner needs get/create/update on configmaps in its namespace): %w", namespace, ConfigMapName, err)
	}
	return cm.Data[DoneKey] == Version, nil
}

func upgradeKind(ctx context.Context, c client.Client, k Kind, res *Result) error {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(aadv1.GroupVersion.WithKind(string(k) + "List"))
	cont := ""
	for {
		if err := c.List(ctx, list, client.Limit(pageSize), client.Continue(cont)); err != nil {
			return fmt.Errorf("listing %s objects to upgrade their field names (are the aadpodidentity.k8s.io CRDs installed, and may the assigner list and update them?): %w", k, err)
		}
		for i := range list.Items {
			res.Scanned[k]++
			changed, err := upgradeObject(ctx, c, &list.Items[i])
			if err != nil {
				return err
			}
			if changed {
				res.Upgraded[k]++
			}
		}
		if cont = list.GetContinue(); cont == "" {
			return nil
		}
	}
}

// upgradeObject converts and writes one object; on a conflict it re-reads the object and converts again.
func upgradeObject(ctx context.Context, c client.Client, obj *unstructured.Unstructured) (bool, error) {
	changed := false
	first := true
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		if !first {
			key := client.ObjectKeyFromObject(obj)
			gvk := obj.GroupVersionKind()
			obj = &unstructured.Unstructured{}
			obj.SetGroupVersionKind(gvk)
			if err := c.Get(ctx, key, obj); err != nil {
				if apierrors.IsNotFound(err) {
					changed = false
					return nil // deleted meanwhile: nothing left to upgrade
				}
				return err
			}
		}
		first = false
		if changed = ConvertObject(obj); !changed {
			return nil
		}
		return c.Update(ctx, obj)
	})
	if err != nil {
		return false, fmt.Errorf("rewriting %s %s with camelCase field names (the assigner needs update on it): %w", obj.GetKind(), client.ObjectKeyFromObject(obj), err)
	}
	return changed, nil
}

func record(ctx context.Context, c client.Client, namespace string, now time.Time) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		var cm corev1.ConfigMap
		err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ConfigMapName}, &cm)
		if apierrors.IsNotFound(err) {
			cm = corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: ConfigMapName},
				Data: map[string]string{DoneKey: Version, CompletedAtKey: now.UTC().Format(time.RFC3339)}}
			if err := c.Create(ctx, &cm); err != nil {
				if apierrors.IsAlreadyExists(err) {
					return apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, ConfigMapName, err)
				}
				return fmt.Errorf("creating ConfigMap %s/%s: %w", namespace, ConfigMapName, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading ConfigMap %s/%s to record the upgrade: %w", namespace, ConfigMapName, err)
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[DoneKey] = Version
		cm.Data[CompletedAtKey] = now.UTC().Format(time.RFC3339)
		return c.Update(ctx, &cm)
	})
}
