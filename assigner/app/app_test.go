package app

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/podidentity/podidentity/assigner/guard"
)

func TestParseFlags(t *testing.T) {
	f, err := ParseFlags([]string{"--managed", "--immutable-user-msis", " a, /subscriptions/x ,", "--resync=1m", "--leader-elect=false"})
	if err != nil {
		t.Fatal(err)
	}
	if !f.Managed || f.LeaderElect || f.Resync != time.Minute || len(guard.SplitList(f.Immutable)) != 2 || f.Workers != 100 {
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

func TestGuardFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(GuardFlags) bool
	}{
		{"off by default", nil, "", func(g GuardFlags) bool {
			return g.Pool == nil && g.AuditInterval == time.Minute && len(g.TrustedNamespaces) == 1 && g.TrustedNamespaces[0] == "kube-system" &&
				g.InjectionLabel == "podidentity.io/injection"
		}},
		{"on", []string{"--identity-pool-label=podidentity.io/pool=identities", "--guard-trusted-namespaces=kube-system,monitoring",
			"--guard-trusted-service-accounts=logging/fluent-bit", "--guard-audit-interval=30s"}, "", func(g GuardFlags) bool {
			r := g.rules()
			return r.Pool != nil && r.Pool.String() == "podidentity.io/pool=identities" && len(r.TrustedNamespaces) == 2 &&
				len(r.TrustedServiceAccounts) == 1 && g.AuditInterval == 30*time.Second
		}},
		{"bad pool", []string{"--identity-pool-label=identities"}, "is not a node label key=value", nil},
		{"bad service account", []string{"--guard-trusted-service-accounts=fluent-bit"}, "is not a service account namespace/name", nil},
		{"bad namespace", []string{"--guard-trusted-namespaces=Kube_System"}, "is not a namespace name", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ParseFlags(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(f.Guard) {
				t.Errorf("guard flags %+v", f.Guard)
			}
		})
	}
}

func TestInjectionFlags(t *testing.T) {
	f, err := ParseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.AttachUninjected || f.Guard.InjectionLabel != "podidentity.io/injection" {
		t.Fatalf("defaults: attach uninjected %v, label %q; want false, podidentity.io/injection", f.AttachUninjected, f.Guard.InjectionLabel)
	}
	f, err = ParseFlags([]string{"--attach-uninjected-pods", "--namespace-injection-label=example.com/inject"})
	if err != nil || !f.AttachUninjected || f.Guard.InjectionLabel != "example.com/inject" {
		t.Fatalf("flags %+v (%v)", f, err)
	}
	for _, bad := range []string{"", "not a label", "/x"} {
		if _, err := ParseFlags([]string{"--namespace-injection-label=" + bad}); err == nil || !strings.Contains(err.Error(), "is not a label key") {
			t.Errorf("--namespace-injection-label=%q: err %v", bad, err)
		}
	}
}

func TestCheckNamespaceAccess(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "namespaces"}, "", errors.New("RBAC: access denied"))
	tests := []struct {
		name    string
		listErr error
		wantErr string
	}{
		{name: "allowed"},
		{name: "forbidden: says what to grant", listErr: forbidden, wantErr: "grant its service account get, list and watch on namespaces"},
		{name: "other failures are left to the caches", listErr: errors.New("connection refused")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithInterceptorFuncs(interceptor.Funcs{
				List: func(ctx context.Context, c client.WithWatch, l client.ObjectList, opts ...client.ListOption) error {
					if tc.listErr != nil {
						return tc.listErr
					}
					return c.List(ctx, l, opts...)
				},
			}).Build()
			err := checkNamespaceAccess(context.Background(), c)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
