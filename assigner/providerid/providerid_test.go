package providerid

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		want     Resource
		wantErr  string
	}{
		{name: "uniform scale set instance", in: "azure:///subscriptions/S1/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool1-123-vmss/virtualMachines/3",
			want: Resource{VirtualMachineScaleSet, "S1", "MC_rg", "aks-pool1-123-vmss"}},
		{name: "standalone VM", in: "azure:///subscriptions/S1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-0",
			want: Resource{VirtualMachine, "S1", "rg", "vm-0"}},
		{name: "flex member is a VM", in: "azure:///subscriptions/S1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/aks-flex_0a1b",
			want: Resource{VirtualMachine, "S1", "rg", "aks-flex_0a1b"}},
		{name: "case-insensitive segments", in: "AZURE:///SUBSCRIPTIONS/S1/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/ss/VIRTUALMACHINES/0",
			want: Resource{VirtualMachineScaleSet, "S1", "RG", "ss"}},
		{name: "empty", in: "", wantErr: "no spec.providerID"},
		{name: "other cloud", in: "aws:///us-east-1a/i-0", wantErr: "not an Azure one"},
		{name: "short", in: "azure:///subscriptions/S1/resourceGroups/rg", wantErr: "too few"},
		{name: "wrong provider", in: "azure:///subscriptions/S1/resourceGroups/rg/providers/Microsoft.Network/virtualMachines/x", wantErr: "microsoft.compute"},
		{name: "scale set without instance", in: "azure:///subscriptions/S1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss", wantErr: "not a VM or a scale set instance"},
		{name: "VM with trailing junk", in: "azure:///subscriptions/S1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/extra", wantErr: "not a VM"},
		{name: "empty segment", in: "azure:///subscriptions//resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/", wantErr: "segment"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want one containing %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestKeyFoldsCaseAndIDRoundTrips(t *testing.T) {
	a, _ := Parse("azure:///subscriptions/S/resourceGroups/MC_RG/providers/Microsoft.Compute/virtualMachineScaleSets/SS/virtualMachines/0")
	b, _ := Parse("azure:///subscriptions/s/resourcegroups/mc_rg/providers/microsoft.compute/virtualmachinescalesets/ss/virtualmachines/7")
	if a.Key() != b.Key() {
		t.Fatalf("keys differ: %q vs %q", a.Key(), b.Key())
	}
	if want := "/subscriptions/S/resourceGroups/MC_RG/providers/Microsoft.Compute/virtualMachineScaleSets/SS"; a.ID() != want {
		t.Fatalf("ID = %q, want %q", a.ID(), want)
	}
	for _, r := range []Resource{a, {VirtualMachine, "S", "rg", "vm"}} {
		back, err := ParseResourceID(r.ID())
		if err != nil || back != r {
			t.Fatalf("ParseResourceID(%q) = %+v, %v; want %+v", r.ID(), back, err, r)
		}
	}
	if !SameID("/subscriptions/S/x/", "/SUBSCRIPTIONS/s/X") || SameID("/a/b", "/a/c") {
		t.Fatal("SameID is wrong")
	}
}
