package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/test/emulators/arm"
)

// TestObjectWrites: an AzureAssignedIdentity is created in its final state, in one write, when ARM answers
// within PendingObjectsAfter (the CRD has no status subresource, so any later status change would bump
// metadata.generation: generation 1 proves a single write); a service principal's is Assigned at once.
// When the PATCH outlasts PendingObjectsAfter, the object shows up as Created while the PATCH runs and
// turns Assigned when it ends.
func TestObjectWrites(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	srv := arm.New(t, arm.Options{Latency: 300 * time.Millisecond})
	quick, slow := ssID("quick"), ssID("slow")
	srv.AddVMSS(quick, true)
	srv.AddVMSS(slow, true)
	srv.SetLatency(slow, 4*time.Second)
	mkNode(t, c, "quick-0", instanceOf(quick, 0))
	mkNode(t, c, "slow-0", instanceOf(slow, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "msi", uami("msi"))
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, TenantID: "tenant", ClientID: "sp-client",
		ClientPassword: corev1.SecretReference{Name: "sp", Namespace: "apps"}}}
	if err := c.Create(ctx, sp); err != nil {
		t.Fatal(err)
	}
	mkBinding(t, c, "apps", "msi", "msi", "app")
	mkBinding(t, c, "apps", "sp", "sp", "app")
	opts := testOptions()
	opts.PendingObjectsAfter = time.Second
	startAssigner(t, env, armClient(srv), opts)

	type object struct {
		status     string
		generation int64
	}
	objects := func() (map[string]object, error) {
		var l aadv1.AzureAssignedIdentityList
		if err := c.List(ctx, &l); err != nil {
			return nil, err
		}
		out := map[string]object{}
		for _, a := range l.Items {
			out[a.Name] = object{a.Status.Status, a.Generation}
		}
		return out, nil
	}
	expect := func(want map[string]object) func() error {
		return func() error {
			got, err := objects()
			if err != nil {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("objects (status generation) %v, want %v", got, want)
			}
			return nil
		}
	}

	mkPod(t, c, "apps", "p", "quick-0", "app", nil)
	eventually(t, 15*time.Second, "one write per object on the quick scale set", expect(map[string]object{
		"p-apps-msi": {aadv1.AssignedIDAssigned, 1}, "p-apps-sp": {aadv1.AssignedIDAssigned, 1}}))

	mkPod(t, c, "apps", "q", "slow-0", "app", nil)
	eventually(t, 15*time.Second, "pending assignment visible while the slow PATCH runs", expect(map[string]object{
		"p-apps-msi": {aadv1.AssignedIDAssigned, 1}, "p-apps-sp": {aadv1.AssignedIDAssigned, 1},
		"q-apps-msi": {aadv1.AssignedIDCreated, 1}, "q-apps-sp": {aadv1.AssignedIDAssigned, 1}}))
	if !srv.Busy(slow) {
		t.Fatal("the slow PATCH already ended: the Created state was not observed during it")
	}
	eventually(t, 15*time.Second, "Assigned when the slow PATCH ends", expect(map[string]object{
		"p-apps-msi": {aadv1.AssignedIDAssigned, 1}, "p-apps-sp": {aadv1.AssignedIDAssigned, 1},
		"q-apps-msi": {aadv1.AssignedIDAssigned, 2}, "q-apps-sp": {aadv1.AssignedIDAssigned, 1}}))
	if err := azureHas(srv, quick, true, uami("msi")); err != nil {
		t.Fatal(err)
	}
	if err := azureHas(srv, slow, true, uami("msi")); err != nil {
		t.Fatal(err)
	}
}
