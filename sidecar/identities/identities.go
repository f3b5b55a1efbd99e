// Package identities keeps the pod's bound identities, read from the downward-API file that carries the pod
// annotation podidentity.io/identities, and chooses the identity a token request asks for.
//
// The kubelet updates a downward-API volume by writing a new timestamped directory and swapping the ..data
// symlink to it, so the file's inode changes and watches on the file itself are lost. Store therefore polls:
// it re-reads the file (a few hundred bytes) at a short interval and swaps in the new list when it changed.
package identities

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/golang-jwt/jwt/v5"

	"github.com/podidentity/podidentity/internal/contract"
)

// Store holds the latest valid identities list.
type Store struct {
	path string
	log  logr.Logger
	// OnChange, when set before Watch, is called after every change of the list.
	OnChange func(ids []contract.Identity)

	ids    atomic.Pointer[[]contract.Identity]
	mu     sync.Mutex // guards raw and lastErr
	raw    []byte
	loaded atomic.Bool
}

// NewStore returns a store for the identities file at path; call Load or Watch to read it.
func NewStore(path string, log logr.Logger) *Store {
	s := &Store{path: path, log: log}
	empty := []contract.Identity{}
	s.ids.Store(&empty)
	return s
}

// Load reads the file once. A file that does not parse leaves the previous list in place.
func (s *Store) Load() error {
	raw, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("reading identities file %s: %w (the webhook mounts it from the pod annotation podidentity.io/identities; check the pod was injected)", s.path, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded.Load() && bytes.Equal(raw, s.raw) {
		return nil
	}
	ids, err := contract.DecodeIdentities(string(raw))
	if err != nil {
		return fmt.Errorf("identities file %s: %w; keeping the previous list", s.path, err)
	}
	if ids == nil {
		ids = []contract.Identity{}
	}
	s.raw = raw
	s.ids.Store(&ids)
	s.loaded.Store(true)
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = id.Namespace + "/" + id.Name
	}
	s.log.Info("identities loaded", "file", s.path, "identities", names)
	if s.OnChange != nil {
		s.OnChange(ids)
	}
	return nil
}

// Watch reloads the file every interval until ctx ends. Errors are logged once per distinct message.
func (s *Store) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	for {
		err := s.Load()
		switch {
		case err != nil && err.Error() != lastErr:
			s.log.Error(err, "identities file not usable")
			lastErr = err.Error()
		case err == nil:
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Ready reports whether the file has been read successfully at least once.
func (s *Store) Ready() bool { return s.loaded.Load() }

// Identities returns the current list, in the annotation's order. Callers must not modify it.
func (s *Store) Identities() []contract.Identity { return *s.ids.Load() }

// SelectorKind names the query parameter that selects an identity.
type SelectorKind string

// The selectors of the IMDS token protocol.
const (
	ByDefault    SelectorKind = ""
	ByClientID   SelectorKind = "client_id"
	ByObjectID   SelectorKind = "object_id"
	ByResourceID SelectorKind = "msi_res_id" // also spelled mi_res_id
)

// Refusal explains why no bound identity matches a request.
type Refusal struct{ Description string }

func (r *Refusal) Error() string { return r.Description }

// Select returns the bound identity a request selects. With no selector it is the first identity of the list:
// the annotation lists identities highest binding weight first, then by namespace and name, so the choice is
// deterministic. Client IDs and resource IDs compare case-insensitively (GUIDs and ARM IDs are). Select
// cannot match an object_id (the annotation carries no object IDs); see ObjectID.
func Select(ids []contract.Identity, kind SelectorKind, value string) (contract.Identity, *Refusal) {
	if len(ids) == 0 {
		return contract.Identity{}, &Refusal{"no identity is bound to this pod: create an AzureIdentityBinding whose selector matches the pod's aadpodidbinding label and, if the binding lists service accounts (podidentity.io/service-accounts), names the pod's service account"}
	}
	switch kind {
	case ByDefault:
		return ids[0], nil
	case ByClientID:
		for _, id := range ids {
			if id.ClientID != "" && strings.EqualFold(id.ClientID, value) {
				return id, nil
			}
		}
		return contract.Identity{}, &Refusal{fmt.Sprintf("client_id %q is not an identity bound to this pod (bound client IDs: %s)", value, list(ids, func(i contract.Identity) string { return i.ClientID }))}
	case ByResourceID:
		for _, id := range ids {
			if id.ResourceID != "" && strings.EqualFold(id.ResourceID, value) {
				return id, nil
			}
		}
		return contract.Identity{}, &Refusal{fmt.Sprintf("msi_res_id %q is not an identity bound to this pod (bound resource IDs: %s)", value, list(ids, func(i contract.Identity) string { return i.ResourceID }))}
	case ByObjectID:
		// The annotation carries no object IDs: the server resolves them from the bound identities' tokens.
		return contract.Identity{}, &Refusal{fmt.Sprintf("object_id %q is not an identity bound to this pod", value)}
	}
	return contract.Identity{}, &Refusal{fmt.Sprintf("unknown selector %q", kind)}
}

func list(ids []contract.Identity, f func(contract.Identity) string) string {
	var out []string
	for _, id := range ids {
		if v := f(id); v != "" {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// ObjectID returns the object ID (the "oid" claim) of an Azure AD access token, or "" when the token is not a
// JWT carrying one. Nothing is verified: the token was just obtained for a bound identity, by its client ID.
func ObjectID(accessToken string) string {
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser(jwt.WithPaddingAllowed()).ParseUnverified(accessToken, claims); err != nil {
		return ""
	}
	oid, _ := claims["oid"].(string)
	return oid
}
