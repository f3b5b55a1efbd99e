package controller

import (
	"fmt"
	"strings"
	"time"

	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/providerid"
)

// Reasons why a pod's identity is not attached to its VM or scale set. Each is the value of the annotation
// podidentity.io/assignment-reason on the AzureAssignedIdentity (which stays Created: AAD Pod Identity's API
// has no conditions), the label of podidentity_assigner_unattached_assignments, and the reason of the
// Warning Events on the pod and the AzureIdentity; the annotation podidentity.io/assignment-error says what to
// do (docs/troubleshooting.md has every message).
const (
	// ReasonIdentityNotAuthorized: ARM refused the identity with LinkedAuthorizationFailed.
	ReasonIdentityNotAuthorized = "IdentityNotAuthorized"
	// ReasonIdentityNotFound: ARM refused the identity with FailedIdentityOperation (deleted in Azure).
	ReasonIdentityNotFound = "IdentityNotFound"
	// ReasonResourceNotAuthorized: the assigner may not write (or read) the VM or scale set.
	ReasonResourceNotAuthorized = "ResourceNotAuthorized"
	// ReasonResourceNotFound: the VM or scale set does not exist in ARM.
	ReasonResourceNotFound = "ResourceNotFound"
	// ReasonResourceBusy: another client's operation runs on the VM or scale set.
	ReasonResourceBusy = "ResourceBusy"
	// ReasonResourceBlocked: an identity deleted in Azure that the assigner may not detach blocks every change.
	ReasonResourceBlocked = "ResourceBlocked"
	// ReasonThrottled: ARM throttles the subscription.
	ReasonThrottled = "Throttled"
	// ReasonARMError: any other refusal or failure of ARM.
	ReasonARMError = "ARMError"
)

// reasons lists them all (the gauge reports each, 0 included, so its series do not come and go).
func reasons() []string {
	return []string{ReasonIdentityNotAuthorized, ReasonIdentityNotFound, ReasonResourceNotAuthorized, ReasonResourceNotFound,
		ReasonResourceBusy, ReasonResourceBlocked, ReasonThrottled, ReasonARMError}
}

// notice is why an identity is not attached: a reason and a message that says what to do. Messages do not
// carry anything that changes from one retry to the next, so an unchanged cause is written (and announced in
// Events) once.
type notice struct {
	Reason, Message string
}

func (n *notice) orEmpty() notice {
	if n == nil {
		return notice{}
	}
	return *n
}

// identityNotice is why ARM refused one identity (LinkedAuthorizationFailed, FailedIdentityOperation).
func identityNotice(f *azure.Failure) notice {
	reason := ReasonARMError
	switch f.Code {
	case azure.CodeLinkedAuthorizationFailed:
		reason = ReasonIdentityNotAuthorized
	case azure.CodeFailedIdentityOperation:
		reason = ReasonIdentityNotFound
	}
	return notice{reason, f.Reason()}
}

// busyNotice: another client's operation runs on the resource; the assigner looks again at most every max.
func busyNotice(res providerid.Resource, max time.Duration) notice {
	return notice{ReasonResourceBusy, fmt.Sprintf("another operation is running on %s (an AKS upgrade, scale-out or node image update: ARM shows it Updating or refuses changes with 409 Conflict); "+
		"the assigner does not write to it meanwhile and attaches the identity when it ends, looking again at most every %s", res.ID(), max)}
}

// throttledNotice: ARM throttles the subscription.
func throttledNotice(res providerid.Resource) notice {
	return notice{ReasonThrottled, fmt.Sprintf("ARM is throttling requests to subscription %s (429): the assigner calls it again only after the Retry-After ARM sent; "+
		"if this lasts, something else uses up the subscription's ARM request limit", res.SubscriptionID)}
}

// resourceNotice is why a failed ARM call leaves the identities of the resource unattached.
func resourceNotice(res providerid.Resource, f *azure.Failure, maxBackoff time.Duration) notice {
	msg := f.Message
	if msg == "" {
		msg = f.Err.Error()
	}
	switch f.Kind {
	case azure.Throttled:
		return throttledNotice(res)
	case azure.Conflict:
		return busyNotice(res, maxBackoff)
	case azure.Unauthorized:
		return notice{ReasonResourceNotAuthorized, fmt.Sprintf("the assigner's identity may not change %s (%s): grant it the Virtual Machine Contributor role on resource group %s",
			res.ID(), codeOr(f, "403"), res.ResourceGroup)}
	case azure.NotFound:
		return notice{ReasonResourceNotFound, fmt.Sprintf("%s does not exist in ARM (ResourceNotFound): check the node's spec.providerID, and that the assigner's credentials are for subscription %s",
			res.ID(), res.SubscriptionID)}
	}
	return notice{ReasonARMError, fmt.Sprintf("ARM refused or failed the change of %s (%s: %s); the assigner retries with a growing delay, at most %s apart",
		res.ID(), codeOr(f, fmt.Sprint(f.StatusCode)), strings.TrimSpace(msg), maxBackoff)}
}

// blockedNotice: an identity deleted in Azure is attached and may not be detached by the assigner (immutable).
func blockedNotice(res providerid.Resource, dead string) notice {
	return notice{ReasonResourceBlocked, fmt.Sprintf("ARM refuses every change of %s while identity %s, which was deleted in Azure, is attached to it (FailedIdentityOperation), "+
		"and the assigner never detaches an identity on --immutable-user-msis or the cluster's own: detach it (az vmss identity remove / az vm identity remove) or re-create it", res.ID(), dead)}
}

func codeOr(f *azure.Failure, fallback string) string {
	if f.Code != "" {
		return f.Code
	}
	if f.StatusCode == 0 {
		return f.Kind.String()
	}
	return fallback
}

// Events: Warning, with the reason above as their reason (the events API folds Events of one object with
// the same reason into a series that keeps the first note, so a new cause must be a new reason).
const (
	// eventIdentityNote is the Event on the AzureIdentity (related: a pod that waits for it): identity id,
	// resource id, message.
	eventIdentityNote = "identity %s could not be attached to %s: %s"
	// eventPodNote is the Event on the pod (related: the AzureIdentity): identity id, resource id, message.
	eventPodNote = "identity %s is not attached to %s, so this pod gets no token for it: %s"
	// eventDetachedNote is the Event on an AzureIdentity whose identity was deleted in Azure and is detached.
	eventDetachedNote = "identity %s was deleted in Azure but still attached to %s, where ARM refuses every change until it is gone: the assigner detaches it; re-create the identity to have it attached again"
)
