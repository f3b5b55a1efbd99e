package identities

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/internal/kubeletfile"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

const rid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"

var (
	heavy = contract.Identity{Namespace: "apps", Name: "heavy", Type: identitytype.UserAssignedMSI, ClientID: "aaaaaaaa-0000-0000-0000-000000000001", ResourceID: rid + "heavy", Weight: 9}
	light = contract.Identity{Namespace: "apps", Name: "light", Type: identitytype.UserAssignedMSI, ClientID: "aaaaaaaa-0000-0000-0000-000000000002", ResourceID: rid + "light"}
	sp    = contract.Identity{Namespace: "apps", Name: "sp", Type: identitytype.ServicePrincipal, ClientID: "aaaaaaaa-0000-0000-0000-000000000003", TenantID: "t"}
)

func TestWatchFollowsKubeletSymlinkSwap(t *testing.T) {
	k := kubeletfile.New(t.TempDir(), "identities")
	s := NewStore(k.Path(), logr.Discard())
	if s.Ready() {
		t.Fatal("ready before reading")
	}
	if err := s.Load(); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	k.Write(t, []byte(contract.EncodeIdentities([]contract.Identity{light})))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, 10*time.Millisecond)
	wait.Until(t, 10*time.Second, 5*time.Millisecond, "first load", func() bool { return s.Ready() && len(s.Identities()) == 1 })

	k.Write(t, []byte(contract.EncodeIdentities([]contract.Identity{heavy, light})))
	wait.Until(t, 10*time.Second, 5*time.Millisecond, "reload after ..data swap", func() bool { return len(s.Identities()) == 2 })
	if got := s.Identities()[0].Name; got != "heavy" {
		t.Fatalf("first identity %q, want heavy (annotation order kept)", got)
	}

	// A broken update keeps the last good list.
	k.Write(t, []byte("{not json"))
	if err := s.Load(); err == nil {
		t.Fatal("Load of invalid content succeeded")
	}
	if len(s.Identities()) != 2 {
		t.Fatal("invalid content replaced the list")
	}
	k.Write(t, []byte("[]"))
	wait.Until(t, 10*time.Second, 5*time.Millisecond, "reload to empty", func() bool { return len(s.Identities()) == 0 })
}

func TestSelect(t *testing.T) {
	ids := []contract.Identity{heavy, light, sp}
	tests := []struct {
		name    string
		ids     []contract.Identity
		kind    SelectorKind
		value   string
		want    string
		refusal string
	}{
		{name: "no selector: first in annotation order", ids: ids, want: "heavy"},
		{name: "client id", ids: ids, kind: ByClientID, value: light.ClientID, want: "light"},
		{name: "client id upper case", ids: ids, kind: ByClientID, value: strings.ToUpper(light.ClientID), want: "light"},
		{name: "service principal by client id", ids: ids, kind: ByClientID, value: sp.ClientID, want: "sp"},
		{name: "resource id other case", ids: ids, kind: ByResourceID, value: strings.ToLower(rid + "light"), want: "light"},
		{name: "unbound client id", ids: ids, kind: ByClientID, value: "bbbbbbbb-0000-0000-0000-000000000001", refusal: "is not an identity bound to this pod"},
		{name: "unbound resource id", ids: ids, kind: ByResourceID, value: rid + "other", refusal: "is not an identity bound to this pod"},
		{name: "resource id prefix is not a match", ids: ids, kind: ByResourceID, value: rid + "ligh", refusal: "is not an identity bound"},
		{name: "object id: not resolvable from the annotation", ids: ids, kind: ByObjectID, value: "bbbbbbbb-0000-0000-0000-000000000001", refusal: "is not an identity bound to this pod"},
		{name: "nothing bound", kind: ByDefault, refusal: "no identity is bound"},
		{name: "nothing bound, client id", kind: ByClientID, value: light.ClientID, refusal: "no identity is bound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ref := Select(tt.ids, tt.kind, tt.value)
			if tt.refusal != "" {
				if ref == nil || !strings.Contains(ref.Description, tt.refusal) {
					t.Fatalf("Select = %v, %v; want refusal containing %q", got.Name, ref, tt.refusal)
				}
				return
			}
			if ref != nil || got.Name != tt.want {
				t.Fatalf("Select = %q, %v; want %q", got.Name, ref, tt.want)
			}
		})
	}
}

func TestObjectID(t *testing.T) {
	tests := []struct{ token, want string }{
		{"eyJhbGciOiJub25lIn0.eyJvaWQiOiIwYjAwIiwiYXVkIjoiciJ9.c2ln", "0b00"}, // {"oid":"0b00","aud":"r"}
		{"eyJhbGciOiJub25lIn0.eyJhdWQiOiJyIn0.c2ln", ""},                      // no oid
		{"not-a-jwt", ""},
		{"a.!!!.c", ""},
	}
	for _, tt := range tests {
		if got := ObjectID(tt.token); got != tt.want {
			t.Errorf("ObjectID(%q) = %q, want %q", tt.token, got, tt.want)
		}
	}
}
