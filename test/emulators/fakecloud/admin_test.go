package fakecloud

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

// TestAdminHandler: the ARM half of the admin API sets the scale set's identities out of band, refuses an
// identity, and lists every identity set ARM applied.
func TestAdminHandler(t *testing.T) {
	hist := &history{}
	srv := arm.NewServer(arm.Options{OnChange: func(id string, users []string) {
		if strings.EqualFold(id, vmss) {
			hist.add(users)
		}
	}})
	defer srv.Close()
	srv.AddVMSS(vmss, false)
	h := httptest.NewServer(adminHandler(imds.New(imds.Options{}).AdminHandler(), srv, vmss, hist, imds.NewAAD(0)))
	defer h.Close()
	put := func(path, body string) int {
		req, _ := http.NewRequest(http.MethodPut, h.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := put("/arm/node-scale-set/identities", `["`+identity+`"]`); code != http.StatusOK {
		t.Fatalf("PUT identities: %d", code)
	}
	if _, users := srv.Identities(vmss); len(users) != 1 || users[0] != identity {
		t.Fatalf("scale set identities %v, want [%s]", users, identity)
	}
	for body, want := range map[string]int{
		`{"id": "` + identity + `", "code": "LinkedAuthorizationFailed"}`: http.StatusNoContent,
		`{"id": "` + identity + `", "code": "Bogus"}`:                     http.StatusBadRequest,
		`{"code": "LinkedAuthorizationFailed"}`:                           http.StatusBadRequest,
		`not json`:                                                        http.StatusBadRequest,
	} {
		if code := put("/arm/denied-identities", body); code != want {
			t.Errorf("PUT denied-identities %s: %d, want %d", body, code, want)
		}
	}
	var changes []Change
	for deadline := time.Now().Add(5 * time.Second); len(changes) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get(h.URL + "/arm/node-scale-set/history")
		if err != nil {
			t.Fatal(err)
		}
		changes = nil
		if err := json.NewDecoder(resp.Body).Decode(&changes); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if len(changes) != 2 || len(changes[0].Identities) != 0 || len(changes[1].Identities) != 1 {
		t.Fatalf("history %+v, want the empty scale set, then the identity set", changes)
	}
}
