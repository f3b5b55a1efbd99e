// Command attacker is the end-to-end suite's hostile workload: each run tries one route around the pod's IMDS
// redirect (ROUTE) and asks for a token of an identity the pod is not bound to (CLIENT_ID), then prints one
// JSON line saying how far it got. It runs as whatever the pod gives it (root with the runtime's default
// capabilities, unless the pod says otherwise). See README.md for the routes.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	r := run(os.Getenv("ROUTE"), Target{
		IMDS:     envOr("IMDS_ADDRESS", "169.254.169.254"),
		ClientID: os.Getenv("CLIENT_ID"),
		Resource: envOr("TOKEN_RESOURCE", "https://management.azure.com/"),
		SetUID:   envInt("SETUID", 15078),
	})
	r.Time = time.Now().UTC()
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	if os.Getenv("LINGER") != "" {
		// Keep the pod Running so the suite can read the log of a long-lived pod (and its sidecar stays up),
		// until the kubelet stops it. Waiting for the signal, not a bare select{}: with no goroutine left (a
		// refused connection leaves none) the Go runtime ends a bare select{} as a deadlock, exit 2.
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envInt(k string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(k), &n); err != nil {
		return def
	}
	return n
}
