// Command probe runs inside a pod of the local cluster's test: it calls the API server through the
// kubernetes Service's ClusterIP (verifying the serving certificate with the pod's service-account CA) and
// the node's IMDS at 169.254.169.254, prints one JSON line per check, and exits 1 if any failed.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

type result struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	Error  string `json:"error,omitempty"`
}

func main() {
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
	ca, err := os.ReadFile(sa + "ca.crt")
	pool := x509.NewCertPool()
	if err == nil {
		pool.AppendCertsFromPEM(ca)
	}
	token, _ := os.ReadFile(sa + "token")
	api := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	plain := &http.Client{Timeout: 10 * time.Second}
	apiURL := fmt.Sprintf("https://%s:%s/version", os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	failed := false
	for _, c := range []struct {
		name, url string
		client    *http.Client
		header    map[string]string
	}{
		{"apiserver", apiURL, api, map[string]string{"Authorization": "Bearer " + string(token)}},
		{"imds", "http://169.254.169.254/metadata/instance/compute?api-version=2021-02-01", plain, map[string]string{"Metadata": "true"}},
	} {
		r := get(c.client, c.url, c.header)
		r.Check = c.name
		failed = failed || !r.OK
		line, _ := json.Marshal(r)
		fmt.Println(string(line))
	}
	if failed {
		os.Exit(1)
	}
}

func get(c *http.Client, url string, header map[string]string) result {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return result{Error: err.Error()}
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{Error: err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return result{OK: resp.StatusCode == http.StatusOK, Status: resp.StatusCode, Body: string(body)}
}
