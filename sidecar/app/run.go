package app

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/cmdline"
	"github.com/podidentity/podidentity/internal/version"
	"github.com/podidentity/podidentity/sidecar/logwriter"
	"github.com/podidentity/podidentity/sidecar/privilege"
)

// Options are the command line and the pod's environment (ParseFlags); Run runs them.
type Options struct {
	Config    Config
	Privilege privilege.Options
	// Verbosity is -v: 1 also logs refused token requests.
	Verbosity int
}

// ParseFlags parses args (without the program name) and reads the pod's name and namespace from the
// environment. A wrong flag, and -h, print the usage to stderr.
func ParseFlags(args []string) (Options, error) {
	fs := flag.NewFlagSet(os.Args[0], flag.ContinueOnError)
	var o Options
	o.Config.BindFlags(fs)
	o.Privilege.BindFlags(fs)
	fs.IntVar(&o.Verbosity, "v", 0, "Log verbosity (1 also logs refused token requests).")
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	o.Config.PodFromEnv(os.Getenv)
	return o, nil
}

// Run starts the sidecar as the process it is: the exemption and the privilege drop first (privilege.Start),
// then the sidecar serves until ctx ends. A configuration New refuses is a usage error (exit code 2).
func Run(ctx context.Context, o Options) error {
	// The audit log has a line per token issued: batch the lines instead of a write syscall each.
	out := logwriter.New(os.Stderr, logwriter.DefaultInterval, logwriter.DefaultLimit)
	defer func() { _ = out.Close() }()
	log := logr.FromSlogHandler(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.Level(-o.Verbosity)}))
	log.Info("starting podidentity-sidecar", "version", version.Version, "pod", o.Config.PodNamespace+"/"+o.Config.PodName)
	// Before anything else runs: the exemption (as root), then no privilege left for the rest of the process.
	if err := privilege.Start(o.Privilege, o.Config.IMDSEndpoint, o.Config.ListenAddress, log.WithName("privilege")); err != nil {
		return err
	}
	a, err := New(o.Config, log)
	if err != nil {
		return &cmdline.ExitError{Code: cmdline.ExitUsage, Err: err}
	}
	return a.Run(ctx)
}
