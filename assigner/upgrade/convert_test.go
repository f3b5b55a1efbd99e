package upgrade

import (
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
)

func TestConvert(t *testing.T) {
	type obj = map[string]interface{}
	tests := []struct {
		name        string
		kind        Kind
		in, want    obj
		wantChanged bool
	}{
		{
			name: "identity: every spec and status field",
			kind: AzureIdentity,
			in: obj{"metadata": obj{"name": "id"}, "spec": obj{"Type": int64(1), "ResourceID": "/r", "ClientID": "c",
				"ClientPassword": obj{"name": "s", "namespace": "ns"}, "TenantID": "t", "ADResourceID": "https://x",
				"ADEndpoint": "https://login", "Replicas": int64(2)}, "status": obj{"AvailableReplicas": int64(1)}},
			want: obj{"metadata": obj{"name": "id"}, "spec": obj{"type": int64(1), "resourceID": "/r", "clientID": "c",
				"clientPassword": obj{"name": "s", "namespace": "ns"}, "tenantID": "t", "adResourceID": "https://x",
				"adEndpoint": "https://login", "replicas": int64(2)}, "status": obj{"availableReplicas": int64(1)}},
			wantChanged: true,
		},
		{
			name:        "binding",
			kind:        AzureIdentityBinding,
			in:          obj{"spec": obj{"AzureIdentity": "id", "Selector": "sel", "Weight": int64(3)}, "status": obj{"AvailableReplicas": int64(0)}},
			want:        obj{"spec": obj{"azureIdentity": "id", "selector": "sel", "weight": int64(3)}, "status": obj{"availableReplicas": int64(0)}},
			wantChanged: true,
		},
		{
			name: "assigned identity, with the embedded identity and binding upgraded too",
			kind: AzureAssignedIdentity,
			in: obj{"spec": obj{
				"AzureIdentityRef": obj{"metadata": obj{"name": "id"}, "spec": obj{"ClientID": "c", "Type": int64(0)}},
				"AzureBindingRef":  obj{"metadata": obj{"name": "b"}, "spec": obj{"Selector": "sel", "AzureIdentity": "id"}},
				"Pod":              "p", "PodNamespace": "ns", "NodeName": "n", "Replicas": int64(1)},
				"status": obj{"Status": "Assigned", "AvailableReplicas": int64(1)}},
			want: obj{"spec": obj{
				"azureIdentityRef": obj{"metadata": obj{"name": "id"}, "spec": obj{"clientID": "c", "type": int64(0)}},
				"azureBindingRef":  obj{"metadata": obj{"name": "b"}, "spec": obj{"selector": "sel", "azureIdentity": "id"}},
				"pod":              "p", "podNamespace": "ns", "nodename": "n", "replicas": int64(1)},
				"status": obj{"status": "Assigned", "availableReplicas": int64(1)}},
			wantChanged: true,
		},
		{
			name:        "assigned identity already camelCase but its embedded copies PascalCase",
			kind:        AzureAssignedIdentity,
			in:          obj{"spec": obj{"azureIdentityRef": obj{"spec": obj{"ResourceID": "/r"}}, "pod": "p"}},
			want:        obj{"spec": obj{"azureIdentityRef": obj{"spec": obj{"resourceID": "/r"}}, "pod": "p"}},
			wantChanged: true,
		},
		{
			name:        "exception",
			kind:        AzurePodIdentityException,
			in:          obj{"spec": obj{"PodLabels": obj{"app": "x"}}, "status": obj{"Status": "ok"}},
			want:        obj{"spec": obj{"podLabels": obj{"app": "x"}}, "status": obj{"status": "ok"}},
			wantChanged: true,
		},
		{
			name:        "a camelCase field already set wins over its PascalCase twin, which is dropped",
			kind:        AzureIdentityBinding,
			in:          obj{"spec": obj{"selector": "new", "Selector": "old", "AzureIdentity": "id"}},
			want:        obj{"spec": obj{"selector": "new", "azureIdentity": "id"}},
			wantChanged: true,
		},
		{
			name:        "already upgraded: unchanged",
			kind:        AzureIdentity,
			in:          obj{"spec": obj{"type": int64(0), "clientID": "c"}, "status": obj{"availableReplicas": int64(0)}},
			want:        obj{"spec": obj{"type": int64(0), "clientID": "c"}, "status": obj{"availableReplicas": int64(0)}},
			wantChanged: false,
		},
		{
			name:        "another kind's old names are not touched",
			kind:        AzurePodIdentityException,
			in:          obj{"spec": obj{"Selector": "x"}},
			want:        obj{"spec": obj{"Selector": "x"}},
			wantChanged: false,
		},
		{
			name:        "unknown kind: unchanged",
			kind:        Kind("Pod"),
			in:          obj{"spec": obj{"NodeName": "n"}},
			want:        obj{"spec": obj{"NodeName": "n"}},
			wantChanged: false,
		},
		{
			name:        "no spec or status",
			kind:        AzureIdentity,
			in:          obj{"metadata": obj{"name": "x"}},
			want:        obj{"metadata": obj{"name": "x"}},
			wantChanged: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runtime.DeepCopyJSON(tt.in)
			if changed := Convert(tt.kind, got); changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
			if Convert(tt.kind, got) {
				t.Errorf("a second Convert changed %v again", got)
			}
		})
	}
}
