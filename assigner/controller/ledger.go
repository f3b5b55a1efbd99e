package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The ledger records, per ARM resource, the identities the assigner attached itself: only those may ever
// be detached. It lives in one ConfigMap per resource (so workers of different resources never contend)
// and is written before a PATCH that attaches, so a crash between the PATCH and the record cannot turn our
// identity into a "foreign" one that is never cleaned up.
type ledger struct {
	c         client.Client
	reader    client.Reader
	namespace string
}

// Labels and keys of ledger ConfigMaps.
const (
	LedgerLabel         = "podidentity.io/ledger"
	ledgerResourceKey   = "resource"
	ledgerIdentitiesKey = "identities"
)

// LedgerName is the ConfigMap name for a resource key.
func LedgerName(resourceKey string) string {
	sum := sha256.Sum256([]byte(resourceKey))
	return "podidentity-arm-" + hex.EncodeToString(sum[:10])
}

func (l *ledger) load(ctx context.Context, key string) (map[string]bool, error) {
	var cm corev1.ConfigMap
	err := l.reader.Get(ctx, client.ObjectKey{Namespace: l.namespace, Name: LedgerName(key)}, &cm)
	if apierrors.IsNotFound(err) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading ConfigMap %s/%s (the assigner needs get/create/update/delete on configmaps in its namespace): %w", l.namespace, LedgerName(key), err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(cm.Data[ledgerIdentitiesKey], "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out[strings.ToLower(line)] = true
		}
	}
	return out, nil
}

func (l *ledger) save(ctx context.Context, key string, owned map[string]bool) error {
	name := LedgerName(key)
	ids := make([]string, 0, len(owned))
	for k := range owned {
		ids = append(ids, k)
	}
	sort.Strings(ids)
	var cm corev1.ConfigMap
	err := l.reader.Get(ctx, client.ObjectKey{Namespace: l.namespace, Name: name}, &cm)
	switch {
	case apierrors.IsNotFound(err):
		if len(ids) == 0 {
			return nil
		}
		cm = corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: l.namespace, Name: name, Labels: map[string]string{LedgerLabel: "true"}},
			Data:       map[string]string{ledgerResourceKey: key, ledgerIdentitiesKey: strings.Join(ids, "\n")},
		}
		err = l.c.Create(ctx, &cm)
	case err != nil:
	case len(ids) == 0:
		err = client.IgnoreNotFound(l.c.Delete(ctx, &cm))
	default:
		cm.Data = map[string]string{ledgerResourceKey: key, ledgerIdentitiesKey: strings.Join(ids, "\n")}
		err = l.c.Update(ctx, &cm)
	}
	if err != nil {
		return fmt.Errorf("writing ConfigMap %s/%s: %w", l.namespace, name, err)
	}
	return nil
}
