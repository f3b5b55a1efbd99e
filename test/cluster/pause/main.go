// Command pause is the local cluster's sandbox ("pause") image: it holds a pod's namespaces and exits on
// SIGTERM or SIGINT. Built into an image by the harness so that nothing is pulled.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
