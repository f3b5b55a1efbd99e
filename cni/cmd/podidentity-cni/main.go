// Command podidentity-cni is the chained CNI plugin of CNI mode (see cni/README.md). The runtime runs it with
// CNI_COMMAND and the network configuration on stdin; the result goes to stdout, logs to stderr.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/go-logr/logr/funcr"

	"github.com/podidentity/podidentity/cni/plugin"
)

func main() {
	log := funcr.NewJSON(func(obj string) { fmt.Fprintln(os.Stderr, obj) }, funcr.Options{}).WithName("podidentity-cni")
	p := &plugin.Plugin{Stdout: os.Stdout, Log: log, Now: time.Now}
	skel.PluginMainFuncs(p.Funcs(), version.All, plugin.About())
}
