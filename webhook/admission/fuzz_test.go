package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// FuzzServeHTTP posts arbitrary bodies to the webhook as the API server would. Panics are not recovered
// here, so any panic fails the fuzzer; every answer must be an AdmissionReview with a response, and an
// allowed CREATE's patch must apply to the object it came with.
//
//	go test ./webhook/admission -run '^$' -fuzz FuzzServeHTTP -fuzztime 60s
func FuzzServeHTTP(f *testing.F) {
	for _, raw := range goldenPods(f) {
		for _, op := range []admissionv1.Operation{admissionv1.Create, admissionv1.Update} {
			f.Add(review(f, op, raw))
		}
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","operation":"CREATE","namespace":"shop","object":null}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","operation":"CREATE","namespace":"shop","resource":{"resource":"pods"},"object":{"spec":{"initContainers":null,"containers":[{"name":"podidentity-init"}]}}}}`))
	f.Add([]byte(`not json`))

	h, _ := newHandler(f)
	wh := (&admission.Webhook{Handler: h}).WithRecoverPanic(false)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/mutate-v1-pod", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		wh.ServeHTTP(rec, req)
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("answer is not an AdmissionReview with a response (%v): %s", err, rec.Body.Bytes())
		}
		var in admissionv1.AdmissionReview
		if json.Unmarshal(body, &in) != nil || in.Request == nil || in.Request.Operation != admissionv1.Create || !out.Response.Allowed || len(out.Response.Patch) == 0 {
			return
		}
		p, err := jsonpatchapply.DecodePatch(out.Response.Patch)
		if err != nil {
			t.Fatalf("patch does not decode: %v", err)
		}
		if _, err := p.Apply(in.Request.Object.Raw); err != nil {
			t.Fatalf("patch does not apply to the object: %v\n%s", err, out.Response.Patch)
		}
	})
}

// FuzzHandleCreate feeds arbitrary pod objects straight to the handler.
func FuzzHandleCreate(f *testing.F) {
	for _, raw := range goldenPods(f) {
		f.Add(raw)
	}
	f.Add([]byte(`{"metadata":null,"spec":{}}`))
	f.Add([]byte(`{"spec":{"volumes":null,"containers":[]}}`))
	h, _ := newHandler(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		resp := h.Handle(context.Background(), request(admissionv1.Create, "shop", "alice", raw, nil))
		if resp.Allowed && len(resp.Patches) > 0 {
			apply(t, raw, resp)
		}
	})
}

func review(t testing.TB, op admissionv1.Operation, raw []byte) []byte {
	r := request(op, "shop", "alice", raw, raw)
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: &r.AdmissionRequest,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
