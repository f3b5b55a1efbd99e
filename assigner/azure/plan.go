// Package azure attaches and detaches user-assigned identities on VMs and scale sets through ARM. Plan
// decides the PATCHes (pure); ARM sends them with armcompute; Classify turns ARM errors into what the
// controller does next.
package azure

import (
	"sort"
	"strings"
)

// MaxIdentitiesPerPatch bounds one PATCH, as AAD Pod Identity did: large deltas are split.
const MaxIdentitiesPerPatch = 150

// Identity types as ARM spells them.
const (
	TypeNone                       = "None"
	TypeSystemAssigned             = "SystemAssigned"
	TypeUserAssigned               = "UserAssigned"
	TypeSystemAssignedUserAssigned = "SystemAssigned, UserAssigned"
)

// ResourceIdentity is what ARM says a VM or scale set has.
type ResourceIdentity struct {
	SystemAssigned bool
	// UserAssigned maps the case-folded identity id to its spelling in ARM.
	UserAssigned map[string]string
	// ClientIDs maps the case-folded identity id to its client id, as ARM reports it.
	ClientIDs map[string]string
	ETag      string
	// ProvisioningState of the resource; "Deleting" means: leave it alone.
	ProvisioningState string
}

// Has reports whether the identity (any casing) is attached.
func (r ResourceIdentity) Has(id string) bool {
	_, ok := r.UserAssigned[strings.ToLower(id)]
	return ok
}

// Patch is one identity-only PATCH.
type Patch struct {
	// Type is the identity type after the patch.
	Type string
	// Add and Remove are identity ids; both are empty when Type drops every user-assigned identity.
	Add, Remove []string
	// IfMatch guards patches that change the type away from user-assigned: if someone attached an identity
	// since we read the resource, the patch must fail rather than remove it.
	IfMatch string
	// Guarded is set on those patches: they must carry the etag of the state they were planned from (an
	// empty IfMatch then means that state's etag is not known, and the resource must be read first).
	Guarded bool
}

// Goal is what Plan works toward on one resource.
type Goal struct {
	// Want maps case-folded identity ids to their spelling: identities pods on this resource need.
	Want map[string]string
	// Owned is the set (case-folded) of identities the assigner attached itself and may therefore remove.
	Owned map[string]bool
	// Keep returns true for identities that must never be removed (immutable list, the cluster's identity),
	// given the case-folded resource id and the client id ARM reports (may be empty).
	Keep func(caseFoldedID, clientID string) bool
	// Skip (case-folded) are identities not to touch now (isolated after an authorization or identity
	// error): neither added nor removed.
	Skip map[string]bool
	// Detach (case-folded) are identities to remove whoever attached them and whatever wants them, unless
	// Keep says otherwise: identities deleted in Azure but still attached, which make ARM refuse every
	// change of the resource until they are gone.
	Detach map[string]bool
	// Hold (case-folded) are identities not to remove yet (the grace period after their AzureIdentity was
	// deleted while pods use it); they are not added either.
	Hold map[string]bool
}

// Delta returns the identities to add and to remove, sorted.
func Delta(cur ResourceIdentity, g Goal) (add, remove []string) {
	for k, spelled := range g.Want {
		if _, ok := cur.UserAssigned[k]; !ok && !g.Skip[k] {
			add = append(add, spelled)
		}
	}
	for k, spelled := range cur.UserAssigned {
		if g.Keep != nil && g.Keep(k, cur.ClientIDs[k]) {
			continue
		}
		if g.Detach[k] {
			remove = append(remove, spelled)
			continue
		}
		if _, wanted := g.Want[k]; wanted || !g.Owned[k] || g.Skip[k] || g.Hold[k] {
			continue
		}
		remove = append(remove, spelled)
	}
	sort.Strings(add)
	sort.Strings(remove)
	return add, remove
}

// Plan returns the PATCHes that take the resource from cur toward g: additions first, then removals, at
// most MaxIdentitiesPerPatch identities each, nothing when there is nothing to do. The identity type of
// each patch keeps the system-assigned identity and stays consistent with the user-assigned identities
// that remain after it. Only the first patch is planned from a known state: callers send it and plan
// again from the resource as ARM answers (a guarded patch after the first has no etag yet).
func Plan(cur ResourceIdentity, g Goal) []Patch {
	add, remove := Delta(cur, g)
	// Identities deleted in Azure go first, in the first patch: ARM refuses every change of the resource,
	// additions included, while one is attached.
	var detach, rest []string
	for _, id := range remove {
		if g.Detach[strings.ToLower(id)] {
			detach = append(detach, id)
		} else {
			rest = append(rest, id)
		}
	}
	remove = append(detach, rest...)
	users := len(cur.UserAssigned)
	var out []Patch
	for len(add) > 0 {
		var p Patch
		if len(out) == 0 && len(detach) > 0 {
			k := min(len(detach), MaxIdentitiesPerPatch-1)
			p.Remove, remove = remove[:k:k], remove[k:]
			users -= k
		}
		n := min(len(add), MaxIdentitiesPerPatch-len(p.Remove))
		users += n
		p.Type, p.Add = identityType(cur.SystemAssigned, users), add[:n:n]
		out = append(out, p)
		add = add[n:]
	}
	for len(remove) > 0 {
		n := min(len(remove), MaxIdentitiesPerPatch)
		users -= n
		p := Patch{Type: identityType(cur.SystemAssigned, users), Remove: remove[:n:n]}
		if users == 0 {
			// ARM rejects a user map with a type lacking UserAssigned; the type alone drops them. Guard with
			// the etag so an identity attached meanwhile by someone else is not dropped with them. A later
			// chunk's etag is not known yet (the earlier chunks change it): the caller sends the first patch,
			// then plans again from ARM's answer.
			p.Remove, p.IfMatch, p.Guarded = nil, cur.ETag, true
			if len(out) > 0 {
				p.IfMatch = ""
			}
		}
		out = append(out, p)
		remove = remove[n:]
	}
	return out
}

func identityType(system bool, users int) string {
	switch {
	case system && users > 0:
		return TypeSystemAssignedUserAssigned
	case system:
		return TypeSystemAssigned
	case users > 0:
		return TypeUserAssigned
	}
	return TypeNone
}

// Apply returns the resource's identities after p succeeded (used when ARM's answer is not at hand).
func Apply(cur ResourceIdentity, p Patch) ResourceIdentity {
	next := ResourceIdentity{SystemAssigned: strings.HasPrefix(p.Type, TypeSystemAssigned), UserAssigned: map[string]string{}, ClientIDs: map[string]string{}}
	if p.Type == TypeUserAssigned || p.Type == TypeSystemAssignedUserAssigned {
		for k, v := range cur.UserAssigned {
			next.UserAssigned[k] = v
			if c, ok := cur.ClientIDs[k]; ok {
				next.ClientIDs[k] = c
			}
		}
	}
	for _, id := range p.Add {
		next.UserAssigned[strings.ToLower(id)] = id
	}
	for _, id := range p.Remove {
		delete(next.UserAssigned, strings.ToLower(id))
	}
	return next
}
