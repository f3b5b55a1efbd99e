package imds

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// AdminHandler serves the emulator's control API (JSON), meant for a listener separate from the IMDS one so
// that nothing which can reach IMDS can change it:
//
//	GET    /attached            the attached identities ([]Identity)
//	PUT    /attached            replace them with the body ([]Identity)
//	POST   /attached            attach the body (one Identity)
//	DELETE /attached/{clientID} detach one identity
//	GET    /counters            the call counters (Counters)
//	POST   /faults              queue faults ([]Fault) for the next identity requests
//	GET    /healthz             200 "ok"
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /attached", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Attached())
	})
	mux.HandleFunc("PUT /attached", func(w http.ResponseWriter, r *http.Request) {
		var ids []Identity
		if !decodeBody(w, r, &ids) {
			return
		}
		for _, id := range ids {
			if id.ClientID == "" {
				writeError(w, http.StatusBadRequest, "bad_request", "every identity needs a clientID")
				return
			}
		}
		s.SetAttached(ids)
		writeJSON(w, http.StatusOK, s.Attached())
	})
	mux.HandleFunc("POST /attached", func(w http.ResponseWriter, r *http.Request) {
		var id Identity
		if !decodeBody(w, r, &id) {
			return
		}
		if id.ClientID == "" {
			writeError(w, http.StatusBadRequest, "bad_request", "the identity needs a clientID")
			return
		}
		s.Attach(id)
		writeJSON(w, http.StatusOK, s.Attached())
	})
	mux.HandleFunc("DELETE /attached/{clientID}", func(w http.ResponseWriter, r *http.Request) {
		s.Detach(r.PathValue("clientID"))
		writeJSON(w, http.StatusOK, s.Attached())
	})
	mux.HandleFunc("GET /counters", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Counters())
	})
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		var faults []Fault
		if !decodeBody(w, r, &faults) {
			return
		}
		for _, f := range faults {
			if f.Status < 400 || f.Count < 1 {
				writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("fault %+v: status must be >= 400 and count >= 1", f))
				return
			}
		}
		s.InjectFaults(faults...)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "body is not valid JSON for this endpoint: "+err.Error())
		return false
	}
	return true
}
