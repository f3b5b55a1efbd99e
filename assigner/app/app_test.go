package app

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

func TestParseFlags(t *testing.T) {
	f, err := ParseFlags([]string{"--managed", "--immutable-user-msis", " a, /subscriptions/x ,", "--resync=1m", "--leader-elect=false"})
	if err != nil {
		t.Fatal(err)
	}
	if !f.Managed || f.LeaderElect || f.Resync != time.Minute || len(splitList(f.Immutable)) != 2 || f.Workers != 100 {
		t.Fatalf("flags %+v", f)
	}
	if !f.UpgradeCRDFields || f.UpgradeCRDFieldsOnly {
		t.Fatalf("CRD field upgrade defaults: at start-up %v, one-shot %v; want true, false", f.UpgradeCRDFields, f.UpgradeCRDFieldsOnly)
	}
	if g, err := ParseFlags([]string{"--upgrade-crd-fields=false", "--upgrade-crd-fields-only"}); err != nil || g.UpgradeCRDFields || !g.UpgradeCRDFieldsOnly {
		t.Fatalf("CRD field upgrade flags not parsed: %+v, %v", g, err)
	}
	if _, err := ParseFlags([]string{"--no-such-flag"}); err == nil {
		t.Fatal("unknown flag accepted")
	}
}

type countingCred struct {
	calls int
	err   error
}

func (c *countingCred) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.calls++
	return azcore.AccessToken{Token: "t"}, c.err
}

func TestCredentialCheck(t *testing.T) {
	bad := &countingCred{err: errors.New("no identity")}
	if err := CredentialCheck(bad, "s/.default", time.Minute)(httptest.NewRequest("GET", "/readyz", nil)); err == nil {
		t.Fatal("failing credential reported ready")
	}
	good := &countingCred{}
	check := CredentialCheck(good, "s/.default", time.Minute)
	for range 3 {
		if err := check(httptest.NewRequest("GET", "/readyz", nil)); err != nil {
			t.Fatal(err)
		}
	}
	if good.calls != 1 {
		t.Fatalf("token fetched %d times; a success should be trusted for the TTL", good.calls)
	}
}
