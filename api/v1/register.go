package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of every type in this package.
var GroupVersion = schema.GroupVersion{Group: "aadpodidentity.k8s.io", Version: "v1"}

// AddToScheme registers the types of this package with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&AzureIdentity{}, &AzureIdentityList{},
		&AzureIdentityBinding{}, &AzureIdentityBindingList{},
		&AzureAssignedIdentity{}, &AzureAssignedIdentityList{},
		&AzurePodIdentityException{}, &AzurePodIdentityExceptionList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
