package azure

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func ids(names ...string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		m[strings.ToLower(n)] = n
	}
	return m
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[strings.ToLower(n)] = true
	}
	return m
}

func TestPlan(t *testing.T) {
	keepCluster := func(k, clientID string) bool { return k == "cluster" || clientID == "kubelet-client" }
	tests := []struct {
		name string
		cur  ResourceIdentity
		goal Goal
		want []Patch
	}{
		{name: "nothing to do sends nothing", cur: ResourceIdentity{UserAssigned: ids("A")}, goal: Goal{Want: ids("a")}},
		{name: "add to empty resource", cur: ResourceIdentity{UserAssigned: ids()}, goal: Goal{Want: ids("A", "B")},
			want: []Patch{{Type: TypeUserAssigned, Add: []string{"A", "B"}}}},
		{name: "system-assigned is preserved on add", cur: ResourceIdentity{SystemAssigned: true, UserAssigned: ids()}, goal: Goal{Want: ids("A")},
			want: []Patch{{Type: TypeSystemAssignedUserAssigned, Add: []string{"A"}}}},
		{name: "remove only owned, keep foreign and immutable (by id or client id)",
			cur:  ResourceIdentity{UserAssigned: ids("A", "foreign", "cluster", "B", "kubelet"), ClientIDs: map[string]string{"kubelet": "kubelet-client"}},
			goal: Goal{Want: ids("A"), Owned: set("B", "cluster", "kubelet"), Keep: keepCluster},
			want: []Patch{{Type: TypeUserAssigned, Remove: []string{"B"}}}},
		{name: "last user identity goes: type drops to SystemAssigned with etag guard",
			cur: ResourceIdentity{SystemAssigned: true, UserAssigned: ids("A"), ETag: "e1"}, goal: Goal{Owned: set("A")},
			want: []Patch{{Type: TypeSystemAssigned, IfMatch: "e1", Guarded: true}}},
		{name: "last user identity goes: type None", cur: ResourceIdentity{UserAssigned: ids("A"), ETag: "e"}, goal: Goal{Owned: set("A")},
			want: []Patch{{Type: TypeNone, IfMatch: "e", Guarded: true}}},
		{name: "skipped identities are not added", cur: ResourceIdentity{UserAssigned: ids()}, goal: Goal{Want: ids("A", "B"), Skip: set("B")},
			want: []Patch{{Type: TypeUserAssigned, Add: []string{"A"}}}},
		{name: "skipped identities are not removed either", cur: ResourceIdentity{UserAssigned: ids("A")}, goal: Goal{Owned: set("A"), Skip: set("A")}},
		{name: "held identities are neither removed nor added", cur: ResourceIdentity{UserAssigned: ids("A")}, goal: Goal{Owned: set("A", "B"), Hold: set("A", "B")}},
		{name: "a deleted identity is detached whoever attached it, and even if wanted",
			cur:  ResourceIdentity{UserAssigned: ids("dead", "foreign"), ETag: "e"},
			goal: Goal{Want: ids("dead", "new"), Detach: set("dead"), Skip: set("dead")},
			want: []Patch{{Type: TypeUserAssigned, Add: []string{"new"}, Remove: []string{"dead"}}}},
		{name: "a deleted identity goes in the first patch, before other removals", cur: ResourceIdentity{UserAssigned: ids("dead", "old", "keep")},
			goal: Goal{Want: ids("keep"), Owned: set("old"), Detach: set("dead")},
			want: []Patch{{Type: TypeUserAssigned, Remove: []string{"dead", "old"}}}},
		{name: "an immutable identity is not detached even when deleted", cur: ResourceIdentity{UserAssigned: ids("cluster")},
			goal: Goal{Detach: set("cluster"), Keep: keepCluster}},
		{name: "add and remove together: adds first", cur: ResourceIdentity{UserAssigned: ids("old")}, goal: Goal{Want: ids("new"), Owned: set("old")},
			want: []Patch{{Type: TypeUserAssigned, Add: []string{"new"}}, {Type: TypeUserAssigned, Remove: []string{"old"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Plan(tc.cur, tc.goal)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Plan = %+v\nwant %+v", got, tc.want)
			}
			// Applying the plan reaches the goal.
			cur := tc.cur
			for _, p := range got {
				cur = Apply(cur, p)
			}
			if add, remove := Delta(cur, tc.goal); len(add)+len(remove) != 0 {
				t.Fatalf("after the plan, delta is still +%v -%v", add, remove)
			}
			if cur.SystemAssigned != tc.cur.SystemAssigned {
				t.Fatal("plan changed the system-assigned identity")
			}
		})
	}
}

func TestPlanChunks(t *testing.T) {
	var want []string
	for i := range 320 {
		want = append(want, fmt.Sprintf("id%03d", i))
	}
	ps := Plan(ResourceIdentity{UserAssigned: ids()}, Goal{Want: ids(want...)})
	if len(ps) != 3 || len(ps[0].Add) != 150 || len(ps[1].Add) != 150 || len(ps[2].Add) != 20 {
		t.Fatalf("chunks: %d patches", len(ps))
	}
	cur := ResourceIdentity{SystemAssigned: true, UserAssigned: ids(want...), ETag: "x"}
	back := Plan(cur, Goal{Owned: set(want...)})
	// The last chunk drops the type and must be guarded with the etag the resource has after the first two
	// chunks, which is not known when planning: not with "x" (ARM would answer 412).
	if len(back) != 3 || back[0].Type != TypeSystemAssignedUserAssigned || back[2].Type != TypeSystemAssigned || !back[2].Guarded || back[2].IfMatch != "" || len(back[2].Remove) != 0 {
		t.Fatalf("removal chunks wrong: %+v", back[2])
	}
	// Planned again from each answer (a new etag each time), the guarded patch carries the current etag.
	for i, etag := range []string{"y", "z"} {
		cur = Apply(cur, Plan(cur, Goal{Owned: set(want...)})[0])
		cur.ETag = etag
		next := Plan(cur, Goal{Owned: set(want...)})
		if len(next) != 2-i {
			t.Fatalf("after chunk %d: %d patches left", i+1, len(next))
		}
	}
	last := Plan(cur, Goal{Owned: set(want...)})
	if len(last) != 1 || last[0].Type != TypeSystemAssigned || !last[0].Guarded || last[0].IfMatch != "z" {
		t.Fatalf("last chunk planned from the current state: %+v", last)
	}
}

func TestIdentitiesIn(t *testing.T) {
	msg := "does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) " +
		"'/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a,/subscriptions/s/resourcegroups/rg2/providers/microsoft.managedidentity/userassignedidentities/b' or the linked scope(s) are invalid. " +
		"Response: '{\"error\":{\"message\":\"Resource '/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a' was not found.\"}}'"
	got := IdentitiesIn(msg)
	want := []string{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a", "/subscriptions/s/resourcegroups/rg2/providers/microsoft.managedidentity/userassignedidentities/b"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("IdentitiesIn = %q, want %q", got, want)
	}
}
