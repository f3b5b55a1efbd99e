// Package providerid maps a Kubernetes node's spec.providerID to the ARM resource that carries the node's
// identities: the scale set for a uniform VMSS instance, the VM itself for a standalone VM or a VMSS Flex
// member. Azure and Kubernetes disagree on the casing of resource groups, so parsing is case-insensitive and
// Resource.Key folds case; the original spelling is kept for the ARM calls.
package providerid

import (
	"fmt"
	"strings"
)

// Kind is the type of ARM resource identities are attached to.
type Kind int

const (
	// VirtualMachine is a standalone VM or a VMSS Flex member.
	VirtualMachine Kind = iota + 1
	// VirtualMachineScaleSet is a uniform scale set; identities apply to all its instances.
	VirtualMachineScaleSet
)

func (k Kind) String() string {
	switch k {
	case VirtualMachine:
		return "virtualMachines"
	case VirtualMachineScaleSet:
		return "virtualMachineScaleSets"
	}
	return "unknown"
}

// Resource is one VM or scale set.
type Resource struct {
	Kind           Kind
	SubscriptionID string
	ResourceGroup  string
	Name           string
}

// ID is the ARM resource id, spelled as the providerID spelled it.
func (r Resource) ID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s", r.SubscriptionID, r.ResourceGroup, r.Kind, r.Name)
}

// Key is the case-folded ID: two providerIDs that name the same resource have the same Key.
func (r Resource) Key() string { return strings.ToLower(r.ID()) }

const prefix = "azure://"

// Parse returns the resource that carries the identities of the node with this providerID.
func Parse(providerID string) (Resource, error) {
	if providerID == "" {
		return Resource{}, fmt.Errorf("node has no spec.providerID yet (the cloud provider sets it once the node is initialised)")
	}
	if !strings.HasPrefix(strings.ToLower(providerID), prefix) {
		return Resource{}, fmt.Errorf("providerID %q is not an Azure one (azure:///subscriptions/...): the assigner only handles Azure VMs and scale sets", providerID)
	}
	path := strings.Trim(providerID[len(prefix):], "/")
	parts := strings.Split(path, "/")
	bad := func(why string) (Resource, error) {
		return Resource{}, fmt.Errorf("providerID %q: %s; expected azure:///subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<vm> or .../virtualMachineScaleSets/<ss>/virtualMachines/<instance>", providerID, why)
	}
	if len(parts) < 8 {
		return bad("too few path segments")
	}
	for i, want := range map[int]string{0: "subscriptions", 2: "resourcegroups", 4: "providers", 5: "microsoft.compute"} {
		if !strings.EqualFold(parts[i], want) {
			return bad(fmt.Sprintf("segment %d is %q, not %q", i+1, parts[i], want))
		}
	}
	for _, p := range parts {
		if p == "" {
			return bad("empty path segment")
		}
	}
	r := Resource{SubscriptionID: parts[1], ResourceGroup: parts[3], Name: parts[7]}
	switch {
	case strings.EqualFold(parts[6], "virtualMachines") && len(parts) == 8:
		r.Kind = VirtualMachine
	case strings.EqualFold(parts[6], "virtualMachineScaleSets") && len(parts) == 10 && strings.EqualFold(parts[8], "virtualMachines"):
		r.Kind = VirtualMachineScaleSet
	default:
		return bad("not a VM or a scale set instance")
	}
	return r, nil
}

// ParseResourceID parses an ARM resource id of a VM or scale set (no azure:// prefix, no instance).
func ParseResourceID(id string) (Resource, error) {
	parts := strings.Split(strings.Trim(id, "/"), "/")
	if len(parts) == 8 && strings.EqualFold(parts[6], "virtualMachineScaleSets") {
		return Parse(prefix + "/" + strings.Trim(id, "/") + "/virtualMachines/0")
	}
	return Parse(prefix + "/" + strings.Trim(id, "/"))
}

// SameID compares two ARM resource ids (of anything: VMs, identities) the way ARM does, ignoring case.
func SameID(a, b string) bool {
	return strings.EqualFold(strings.TrimRight(a, "/"), strings.TrimRight(b, "/"))
}
