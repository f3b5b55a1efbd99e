package azure

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/podidentity/podidentity/assigner/providerid"
)

// Client reads and patches the identities of VMs and scale sets.
type Client interface {
	Get(ctx context.Context, r providerid.Resource) (ResourceIdentity, error)
	// Patch sends one identity-only PATCH and waits for its long-running operation.
	Patch(ctx context.Context, r providerid.Resource, p Patch) (ResourceIdentity, error)
}

// ARMOptions configure the ARM client.
type ARMOptions struct {
	// Cloud is the cloud (public, sovereign, or custom endpoints; tests point it at an emulator).
	Cloud cloud.Configuration
	// Transport overrides the HTTP client (tests: the emulator's TLS client).
	Transport policy.Transporter
	// Retry configures the SDK's own retries. 429 is left to the controller (it requeues the resource after
	// Retry-After instead of blocking a worker), so StatusCodes defaults to 408 and 5xx.
	Retry policy.RetryOptions
	// PollFrequency is how often a long-running operation is polled when ARM gives no Retry-After.
	PollFrequency time.Duration
}

// ARM is a Client backed by armcompute.
type ARM struct {
	cred azcore.TokenCredential
	opts ARMOptions

	mu   sync.Mutex
	vms  map[string]*armcompute.VirtualMachinesClient
	vmss map[string]*armcompute.VirtualMachineScaleSetsClient
}

// NewARM returns an ARM client; the SDK clients are created per subscription on first use.
func NewARM(cred azcore.TokenCredential, opts ARMOptions) *ARM {
	if opts.Retry.StatusCodes == nil {
		opts.Retry.StatusCodes = []int{http.StatusRequestTimeout, http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout}
	}
	if opts.PollFrequency <= 0 {
		opts.PollFrequency = 5 * time.Second
	}
	return &ARM{cred: cred, opts: opts, vms: map[string]*armcompute.VirtualMachinesClient{}, vmss: map[string]*armcompute.VirtualMachineScaleSetsClient{}}
}

func (a *ARM) clientOptions() *arm.ClientOptions {
	return &arm.ClientOptions{
		ClientOptions:         policy.ClientOptions{Cloud: a.opts.Cloud, Transport: a.opts.Transport, Retry: a.opts.Retry},
		DisableRPRegistration: true,
	}
}

func (a *ARM) vmClient(sub string) (*armcompute.VirtualMachinesClient, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := strings.ToLower(sub)
	if c := a.vms[k]; c != nil {
		return c, nil
	}
	c, err := armcompute.NewVirtualMachinesClient(sub, a.cred, a.clientOptions())
	if err != nil {
		return nil, fmt.Errorf("creating the VM client for subscription %s: %w", sub, err)
	}
	a.vms[k] = c
	return c, nil
}

func (a *ARM) vmssClient(sub string) (*armcompute.VirtualMachineScaleSetsClient, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := strings.ToLower(sub)
	if c := a.vmss[k]; c != nil {
		return c, nil
	}
	c, err := armcompute.NewVirtualMachineScaleSetsClient(sub, a.cred, a.clientOptions())
	if err != nil {
		return nil, fmt.Errorf("creating the scale set client for subscription %s: %w", sub, err)
	}
	a.vmss[k] = c
	return c, nil
}

// Get reads the resource's identities.
func (a *ARM) Get(ctx context.Context, r providerid.Resource) (ResourceIdentity, error) {
	switch r.Kind {
	case providerid.VirtualMachineScaleSet:
		c, err := a.vmssClient(r.SubscriptionID)
		if err != nil {
			return ResourceIdentity{}, err
		}
		resp, err := c.Get(ctx, r.ResourceGroup, r.Name, nil)
		if err != nil {
			return ResourceIdentity{}, err
		}
		return fromVMSS(resp.VirtualMachineScaleSet), nil
	case providerid.VirtualMachine:
		c, err := a.vmClient(r.SubscriptionID)
		if err != nil {
			return ResourceIdentity{}, err
		}
		resp, err := c.Get(ctx, r.ResourceGroup, r.Name, nil)
		if err != nil {
			return ResourceIdentity{}, err
		}
		return fromVM(resp.VirtualMachine), nil
	}
	return ResourceIdentity{}, fmt.Errorf("resource kind %v is not supported", r.Kind)
}

// Patch sends p and waits until ARM reports the operation finished.
func (a *ARM) Patch(ctx context.Context, r providerid.Resource, p Patch) (ResourceIdentity, error) {
	typ := armcompute.ResourceIdentityType(p.Type)
	var users map[string]*armcompute.UserAssignedIdentitiesValue
	if len(p.Add)+len(p.Remove) > 0 {
		users = make(map[string]*armcompute.UserAssignedIdentitiesValue, len(p.Add)+len(p.Remove))
		for _, id := range p.Add {
			users[id] = &armcompute.UserAssignedIdentitiesValue{} // {}: attach
		}
		for _, id := range p.Remove {
			users[id] = nil // null: detach
		}
	}
	var ifMatch *string
	if p.IfMatch != "" {
		ifMatch = to.Ptr(p.IfMatch)
	}
	poll := &runtime.PollUntilDoneOptions{Frequency: a.opts.PollFrequency}
	switch r.Kind {
	case providerid.VirtualMachineScaleSet:
		c, err := a.vmssClient(r.SubscriptionID)
		if err != nil {
			return ResourceIdentity{}, err
		}
		body := armcompute.VirtualMachineScaleSetUpdate{Identity: &armcompute.VirtualMachineScaleSetIdentity{Type: &typ, UserAssignedIdentities: users}}
		poller, err := c.BeginUpdate(ctx, r.ResourceGroup, r.Name, body, &armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions{IfMatch: ifMatch})
		if err != nil {
			return ResourceIdentity{}, err
		}
		resp, err := poller.PollUntilDone(ctx, poll)
		if err != nil {
			return ResourceIdentity{}, err
		}
		return fromVMSS(resp.VirtualMachineScaleSet), nil
	case providerid.VirtualMachine:
		c, err := a.vmClient(r.SubscriptionID)
		if err != nil {
			return ResourceIdentity{}, err
		}
		body := armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: &typ, UserAssignedIdentities: users}}
		poller, err := c.BeginUpdate(ctx, r.ResourceGroup, r.Name, body, &armcompute.VirtualMachinesClientBeginUpdateOptions{IfMatch: ifMatch})
		if err != nil {
			return ResourceIdentity{}, err
		}
		resp, err := poller.PollUntilDone(ctx, poll)
		if err != nil {
			return ResourceIdentity{}, err
		}
		return fromVM(resp.VirtualMachine), nil
	}
	return ResourceIdentity{}, fmt.Errorf("resource kind %v is not supported", r.Kind)
}

func fromVMSS(v armcompute.VirtualMachineScaleSet) ResourceIdentity {
	var state *string
	if v.Properties != nil {
		state = v.Properties.ProvisioningState
	}
	if v.Identity == nil {
		return identityOf(v.Etag, state, nil, nil)
	}
	return identityOf(v.Etag, state, v.Identity.Type, v.Identity.UserAssignedIdentities)
}

func fromVM(v armcompute.VirtualMachine) ResourceIdentity {
	var state *string
	if v.Properties != nil {
		state = v.Properties.ProvisioningState
	}
	if v.Identity == nil {
		return identityOf(v.Etag, state, nil, nil)
	}
	return identityOf(v.Etag, state, v.Identity.Type, v.Identity.UserAssignedIdentities)
}

// identityOf is the part of a VM or scale set the assigner reads; the SDK has a type for each, with the same fields.
func identityOf(etag, state *string, typ *armcompute.ResourceIdentityType, users map[string]*armcompute.UserAssignedIdentitiesValue) ResourceIdentity {
	out := ResourceIdentity{UserAssigned: map[string]string{}, ClientIDs: map[string]string{}, ETag: deref(etag), ProvisioningState: deref(state)}
	out.SystemAssigned = typ != nil && strings.HasPrefix(string(*typ), TypeSystemAssigned)
	for id, val := range users {
		out.UserAssigned[strings.ToLower(id)] = id
		if val != nil && val.ClientID != nil {
			out.ClientIDs[strings.ToLower(id)] = *val.ClientID
		}
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
